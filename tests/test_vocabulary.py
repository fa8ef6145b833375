import pytest

from ovearth import Vocabulary
from ovearth.errors import InputError


def test_parse_classes_and_synonyms():
    v = Vocabulary.parse("building, roof ,house;road; tree")
    assert v.classes == (("building", "roof", "house"), ("road",), ("tree",))
    assert v.names == ["building", "roof", "house", "road", "tree"]
    assert v.name_class == [0, 0, 0, 1, 2]
    assert v.labels == ["building", "road", "tree"]
    assert Vocabulary.parse(["store tank", ["a", "b"]]).names == ["store tank", "a", "b"]
    assert str(v) == "building,roof,house;road;tree"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ([], "empty"),
        ("a;;b", "empty class"),
        ("a;b;", "empty class"),
        ("a,,b;c", "empty name"),
        ("road;tree,Road", "appears twice"),
    ],
)
def test_bad_vocabularies(spec, message):
    with pytest.raises(InputError, match=message):
        Vocabulary.parse(spec)
