import pytest
from PIL import Image

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
    with pytest.raises(PromptListError, match="absent.txt does not exist.*RANDOM_DIFFUSION_PROMPTS_FILE"):
        load_prompts(tmp_path / "absent.txt")
    with pytest.raises(PromptListError, match="is a folder, not a file.*RANDOM_DIFFUSION_PROMPTS_FILE"):
        load_prompts(tmp_path)


def test_an_image_given_as_the_prompts_file_is_called_binary_not_latin1(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(PromptListError, match=r"photo\.png is an image or other binary file, not text"):
        load_prompts(path)


def test_override_list_is_cleaned_and_empty_refused():
    assert require_prompts(["  a  ", "", "b"], source="run config") == ["a", "b"]
    with pytest.raises(PromptListError, match="run config"):
        require_prompts(["", "   "], source="run config")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"])
def test_byte_order_marks_and_utf16_files_are_read_as_text(tmp_path, encoding):
    path = tmp_path / "prompts.txt"
    path.write_bytes("# liste\nun chat qui danse 🐈\n\nthé glacé\n".encode(encoding))
    assert load_prompts(path) == ["un chat qui danse 🐈", "thé glacé"]


def test_undecodable_bytes_name_the_file_line_and_encoding(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"a cat\nan owl\ncaf\xe9 au lait\n")  # Latin-1
    with pytest.raises(PromptListError, match=r"prompts\.txt, line 3: .*not valid UTF-8.*save the file as UTF-8"):
        load_prompts(path)


@pytest.mark.parametrize(
    "bad, shown", [("\x00", r"\\x00"), ("\x1b[31m", r"\\x1b"), ("\x0c", r"\\x0c"), ("\x85", r"\\x85")]
)
def test_control_characters_in_a_prompt_name_the_line(tmp_path, bad, shown):
    path = tmp_path / "prompts.txt"
    path.write_text(f"a cat\nan{bad} owl\n", encoding="utf-8")
    with pytest.raises(PromptListError, match=rf"prompts\.txt, line 2: control character '{shown}' at column 3"):
        load_prompts(path)


def test_tabs_stay_allowed_in_prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\twith a hat\n", encoding="utf-8")
    assert load_prompts(path) == ["a cat\twith a hat"]


def test_absurdly_long_line_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n" + "x" * 10_001 + "\n", encoding="utf-8")
    with pytest.raises(PromptListError, match=r"prompts\.txt, line 2: 10,001 characters"):
        load_prompts(path)
    path.write_text("a cat\n" + "x" * 10_000 + "\n", encoding="utf-8")
    assert len(load_prompts(path)[1]) == 10_000  # long but plausible: CLIP truncation is reported downstream


def test_override_prompts_with_control_characters_name_the_item():
    with pytest.raises(PromptListError, match=r"--prompt, prompt 2: control character '\\x00'"):
        require_prompts(["a cat", "an\x00owl"], source="--prompt")
    with pytest.raises(PromptListError, match=r"run config, prompt 1: 20,000 characters"):
        require_prompts(["y" * 20_000], source="run config")
