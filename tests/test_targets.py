"""Class and neuron target parsing (explain/targets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from explain.errors import TargetError
from explain.targets import ClassTarget, NeuronTarget, TopK, match_notes, parse_neuron, parse_target, resolve_class

NAMES = ["tabby", "tiger cat", "catamaran", "cardigan", "Cardigan", "crane", "crane", "cup"]


@pytest.fixture(scope="module")
def imagenet() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def test_indices_exact_names_and_unique_prefixes() -> None:
    assert resolve_class("2", NAMES) == 2 and resolve_class(7, NAMES) == 7
    assert resolve_class("TIGER CAT", NAMES) == 1  # case-insensitive
    assert resolve_class("tab", NAMES) == 0 and resolve_class(" cu ", NAMES) == 7
    assert resolve_class("catam", NAMES) == 2  # a unique prefix that is no whole word of a class
    assert resolve_class("cat", NAMES) == 1  # a whole word of exactly one class name comes before a prefix


def test_a_word_of_several_class_names_is_ambiguous_even_when_it_starts_another(imagenet: list[str]) -> None:
    """Issue 15: ``-t cat`` explained "catamaran", the only name starting with "cat", though "cat" is a word of five
    ImageNet classes."""
    with pytest.raises(TargetError) as caught:
        resolve_class("cat", imagenet)
    assert str(caught.value) == (
        "class name 'cat' is ambiguous: it is a word of 282 (tiger cat), 283 (Persian cat), 284 (Siamese cat), "
        "285 (Egyptian cat), 383 (Madagascar cat); 484 (catamaran) only starts with it; use an index or a full name")
    with pytest.raises(TargetError, match="'shark' is ambiguous: it is a word of 2 \\(great white shark\\), 3 "):
        resolve_class("shark", imagenet)
    assert resolve_class("persian", imagenet) == 283 and resolve_class("catam", imagenet) == 484


def test_names_that_differ_only_in_case_are_told_apart_by_their_spelling(imagenet: list[str]) -> None:
    assert resolve_class("cardigan", NAMES) == 3 and resolve_class("Cardigan", NAMES) == 4
    with pytest.raises(TargetError, match="ambiguous: it matches 3 \\(cardigan\\), 4 \\(Cardigan\\)"):
        resolve_class("CARDIGAN", NAMES)
    assert resolve_class("cardigan", imagenet) == 474 and resolve_class("Cardigan", imagenet) == 264


def test_errors_say_what_is_wrong() -> None:
    with pytest.raises(TargetError, match="out of range: the model has 8 classes \\(0..7\\)"):
        resolve_class("8", NAMES)
    with pytest.raises(TargetError, match="ambiguous"):
        resolve_class("crane", NAMES)  # two classes with the very same name
    with pytest.raises(TargetError, match="ambiguous"):
        resolve_class("ca", NAMES)
    with pytest.raises(TargetError, match="unknown class name 'tabbby'.*tabby"):
        resolve_class("tabbby", NAMES)
    with pytest.raises(TargetError, match="empty"):
        resolve_class("  ", NAMES)


def test_parse_target_and_neuron() -> None:
    assert parse_target("top3", NAMES) == TopK(3) and parse_target("Top1", NAMES) == TopK(1)
    assert parse_target("cup", NAMES) == ClassTarget(7)
    with pytest.raises(TargetError, match="k must be between 1 and the number of classes \\(8\\)"):
        parse_target("top9", NAMES)
    assert parse_neuron("features.4:12") == NeuronTarget("features.4", 12)
    unit = parse_neuron("features.4:12:3:5")
    assert unit.is_unit and (unit.y, unit.x) == (3, 5) and str(unit) == "features.4:12:3:5"
    for bad in ("features.4", "features.4:a", "features.4:1:2", ":3"):
        with pytest.raises(TargetError, match="expected LAYER:CHANNEL"):
            parse_neuron(bad)


def test_partial_names_get_a_note_saying_what_they_were_taken_as(imagenet: list[str]) -> None:
    specs = ["catam", "persian", "cat", "tabby", "top3", "282", "Tiger Cat", "nope", "catam"]
    assert match_notes(specs, imagenet) == [
        "--target 'catam' is taken as 484 (catamaran), the only class name starting with it",
        "--target 'persian' is taken as 283 (Persian cat), the only class name with that word",
    ]  # ambiguous ("cat"), unknown ("nope"), exact, index and topK specs get none


def test_cli_prints_the_note_unless_quiet(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    samples = Path(__file__).resolve().parents[1] / "sample_images"
    runner = CliRunner()
    ambiguous = runner.invoke(app, ["cam", str(samples / "chelsea.png"), "-t", "cat", "--out", str(tmp_path / "c")])
    assert ambiguous.exit_code == 2 and ambiguous.stderr.startswith("error: class name 'cat' is ambiguous: it is a "
                                                                    "word of 282 (tiger cat)")
    assert len(ambiguous.stderr.splitlines()) == 1 and not (tmp_path / "c").exists()
    args = ["cam", str(samples / "chelsea.png"), "-t", "catam", "--out", str(tmp_path / "a")]
    told = runner.invoke(app, args)
    assert told.exit_code == 0 and "note: --target 'catam' is taken as 484 (catamaran)" in told.stderr
    quiet = runner.invoke(app, [*args[:-1], str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and "note:" not in quiet.output


def test_a_shortlist_names_a_last_item_instead_of_saying_one_more() -> None:
    """'and 1 more' takes the room of the one name it hides (neighbours --evaluate said '... schooner (5) and 1
    more')."""
    from explain.errors import shortlist

    assert shortlist("abcdef", 5) == "a, b, c, d, e, f"
    assert shortlist("abcdefg", 5) == "a, b, c, d, e and 2 more"
    assert shortlist([], 3) == "" and shortlist(["x"], 0) == "x"
