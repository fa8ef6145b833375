"""Which command options set which :class:`~ovearth.segment.settings.SegmentSettings` fields.

One explicit table per command (:data:`SETTINGS_OPTIONS`); ``tests/test_cli.py`` checks every
key against the command's parameters and every value against the settings' fields, so a
renamed option fails there instead of silently leaving the setting at its default.
"""

from __future__ import annotations


def given(**options):
    """The options the user gave (None means "not given": the protocol's value stays)."""
    return {key: value for key, value in options.items() if value is not None}


#: the options of a model run that every command with settings shares: parameter -> field
_RUN_KNOBS = {
    "mode": "mode",
    "confidence_threshold": "confidence_threshold",
    "prob_thd": "prob_thd",
    "class_prob_thd": "class_prob_thd",
    "prompt_batch": "prompt_batch",
    "refine": "refine",
    "refine_at": "refine_at",
    "refine_for": "refine_for",
    "zoom": "zoom",
    "skip_absent": "skip_absent",
    "precision": "precision",
    "prompt_form": "prompt_form",
    "view_batch": "view_batch",
    "compile_backbone": "compile",
}
SETTINGS_OPTIONS: dict[str, dict[str, str]] = {
    "segment": {
        **_RUN_KNOBS,
        "bg_idx": "bg_idx",
        "slide_crop": "slide_crop",
        "slide_stride": "slide_stride",
        "instances": "use_instances",
        "semantic": "use_semantic",
        "presence": "use_presence",
    },
    "eval": _RUN_KNOBS,
    # every dataset keeps its protocol's thresholds: the run-wide knobs only
    "reproduce": {
        name: field
        for name, field in _RUN_KNOBS.items()
        if name not in ("confidence_threshold", "prob_thd", "class_prob_thd")
    },
    "calibrate": {
        name: _RUN_KNOBS[name] for name in ("refine", "refine_at", "refine_for", "precision", "prompt_form")
    },
}


def given_settings(command: str, parameters: dict) -> dict:
    """The SegmentSettings fields that ``command``'s ``parameters`` (its ``locals()``) were given.

    Reads exactly the options of :data:`SETTINGS_OPTIONS` ``[command]``; an option whose
    value is None was not given (the protocol's or preset's value stays).

    Raises:
        KeyError: an option of the table that the command does not have (a renamed option).

    """
    table = SETTINGS_OPTIONS[command]
    missing = sorted(set(table) - set(parameters))
    if missing:
        raise KeyError(f"{command}: no parameter {', '.join(missing)} (see SETTINGS_OPTIONS)")
    return given(**{field: parameters[option] for option, field in table.items()})
