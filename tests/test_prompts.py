import pytest

from random_diffusion_dagster.engine.prompts import PromptListError, load_prompts, parse_prompts, require_prompts


def test_blank_lines_and_comments_are_ignored():
    text = "# header\n\n  a cat  \n   # indented comment\nun chat qui danse 🐈\n\n"
    assert parse_prompts(text) == ["a cat", "un chat qui danse 🐈"]


def test_comment_only_file_is_refused_naming_the_file_and_fix(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# nothing here\n\n")
    with pytest.raises(PromptListError, match=r"prompts\.txt is empty.*add at least one prompt"):
        load_prompts(path)


def test_missing_file_names_the_variable_to_set(tmp_path):
    with pytest.raises(PromptListError, match="RANDOM_DIFFUSION_PROMPTS_FILE"):
        load_prompts(tmp_path / "absent.txt")


def test_override_list_is_cleaned_and_empty_refused():
    assert require_prompts(["  a  ", "", "b"], source="run config") == ["a", "b"]
    with pytest.raises(PromptListError, match="run config"):
        require_prompts(["", "   "], source="run config")
