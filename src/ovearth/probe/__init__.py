"""Looking inside SAM 3: attention collectors and audits."""
