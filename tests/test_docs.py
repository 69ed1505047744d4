"""Documentation that is generated from code must stay equal to it."""

from pathlib import Path

from webui.engine.samplers import SamplerRegistry, sampler_table_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_sampler_doc_matches_table() -> None:
    text = (ROOT / "docs" / "samplers.md").read_text(encoding="utf-8")
    assert sampler_table_markdown(SamplerRegistry()) in text


def test_readme_has_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("\n", 1)[1].split("```", 1)[0].strip() for b in readme.split("```bash")[1:]]
    setup = [b for b in blocks if "launch.py" in b or "pytest" in b]
    assert len(setup) == 2
    assert setup[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_extension_guide_snippets_are_valid_python() -> None:
    """An author copies these: each ```python block of docs/extensions.md must at least parse."""
    import ast

    text = (ROOT / "docs" / "extensions.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    assert len(blocks) >= 5
    for block in blocks:
        ast.parse(block)
