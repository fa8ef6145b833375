import csv
import json
import math

from PIL import Image

from ovearth.run.reports import write_metrics


def test_reports_hold_the_numbers(tmp_path):
    result = {
        "mIoU": 50.0,
        "mAcc": 62.5,
        "aAcc": 80.0,
        "mFscore": 60.0,
        "num_images": 3,
        "per_class": {
            "road": {"IoU": 75.0, "Acc": 80.0, "Fscore": 85.0, "Precision": 90.0, "Recall": 80.0},
            "tree": {"IoU": 25.0, "Acc": 45.0, "Fscore": math.nan, "Precision": 0.0, "Recall": 45.0},
            "ship": {
                "IoU": math.nan,
                "Acc": math.nan,
                "Fscore": math.nan,
                "Precision": math.nan,
                "Recall": math.nan,
            },
        },
        "skipped": [{"image": "a/b", "problem": "missing label"}],
    }
    paths = write_metrics(tmp_path, result, "Test set")
    data = json.loads(paths["json"].read_text())
    assert data["mIoU"] == 50.0 and data["per_class"]["ship"]["IoU"] is None  # NaN -> null
    md = paths["md"].read_text()
    assert "| 50.00 | 62.50 | 80.00 | 60.00 | 3 |" in md and "| ship | - | - | - | - | - |" in md
    assert "`a/b`: missing label" in md
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0][:2] == ["class", "IoU"] and rows[1] == [
        "road",
        "75.00",
        "80.00",
        "85.00",
        "90.00",
        "80.00",
    ]
    assert ["mIoU", "50.00"] in rows
    with Image.open(paths["png"]) as chart:
        assert chart.format == "PNG" and chart.width > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.csv",
        "metrics.json",
        "metrics.md",
        "per_class_iou.png",
    ]  # no temporary files left
