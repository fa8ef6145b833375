"""Everything that works on files in bulk: segmenting files and scenes, evaluation, ablation."""
