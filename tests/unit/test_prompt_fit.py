"""System prompt edits that fit the prompt (real embedding model, loaded once): the edit joins
the section it belongs to, is not proposed when the prompt already asks for it, and replaces a
line asking for the opposite, saying so."""

from __future__ import annotations

import pytest

from refinery.propose.prompt_fit import fit
from refinery.signals.evidence import BEHAVIOUR_RULES
from schemas.artifacts import added_instruction, check_artifact

RULES = {r.name: r.instruction for r in BEHAVIOUR_RULES}
LIMITS = {"duplicate_similarity": 0.7, "conflict_similarity": 0.6}

STRUCTURED = """# Role
You are the support assistant of Nimbus Gadgets.
Answer questions about orders, products, accounts and returns.

# Style
- Use a friendly, plain tone.
- Keep a professional voice.

# Sources
- Use the retrieved help-center articles when they are relevant.
- Never invent order numbers.
"""


@pytest.fixture(scope="module")
def embed():
    from refinery.embed.embedder import get_embedder
    from refinery.settings import Settings

    return get_embedder(Settings()).embed


def test_an_opposite_instruction_is_replaced_and_the_rationale_says_so(embed, monkeypatch) -> None:
    prompt = "You are the support assistant of Acme.\nBe thorough.\nCite your sources.\n"
    fitted = fit(prompt, "length", RULES["length"], embed, **LIMITS)
    assert fitted is not None and fitted.replaced == "Be thorough."
    assert fitted.proposed_text == (
        f"You are the support assistant of Acme.\n{RULES['length']}\nCite your sources.\n"
    )

    from refinery.signals import evidence
    from tests.unit.test_drafters import _fake_classify
    from tests.unit.test_propose_merge import _input, _too_long

    monkeypatch.setattr(evidence, "classify", _fake_classify)
    data = _input("c_1", [_too_long(i) for i in range(6)])
    data.prompt_text, data.embed = prompt, embed
    from refinery.propose.drafting import draft

    proposal = draft(data)
    assert proposal is not None and proposal.kind == "system_prompt_edit"
    assert "Replaces the prompt's “Be thorough.”" in proposal.rationale
    artifact = proposal.artifact.model_dump()
    assert artifact["instruction"] == RULES["length"]
    assert "-Be thorough." in artifact["diff"]
    check_artifact(proposal.kind, artifact)


@pytest.mark.parametrize(
    "line", ["Keep your answers short.", "- Keep answers brief and lead with the answer."]
)
def test_an_instruction_the_prompt_already_has_is_not_proposed_again(embed, line: str) -> None:
    prompt = f"You are the support assistant of Acme.\n{line}\n"
    assert fit(prompt, "length", RULES["length"], embed, **LIMITS) is None


def test_the_edit_joins_its_section_in_the_section_list_style(embed) -> None:
    fitted = fit(STRUCTURED, "tone", RULES["tone"], embed, **LIMITS)
    assert fitted is not None and fitted.section == "Style" and fitted.replaced is None
    assert f"- Keep a professional voice.\n- {RULES['tone']}\n\n# Sources" in fitted.proposed_text
    assert added_instruction(STRUCTURED, fitted.proposed_text) == f"- {RULES['tone']}"


def test_a_numbered_list_continues_its_numbering(embed) -> None:
    prompt = "Rules:\n1. Greet the user by name.\n2. Stay patient with upset users.\n"
    fitted = fit(prompt, "tone", RULES["tone"], embed, **LIMITS)
    assert fitted is not None and fitted.section == "Rules"
    assert fitted.proposed_text.endswith(f"2. Stay patient with upset users.\n3. {RULES['tone']}\n")


def test_unrelated_prompt_or_no_model_appends_after_a_blank_line(embed) -> None:
    prompt = "You are the support assistant of Acme."
    expected = f"{prompt}\n\n{RULES['language']}\n"
    fitted = fit(prompt, "language", RULES["language"], embed, **LIMITS)
    assert fitted is not None and fitted.proposed_text == expected and fitted.section is None
    no_model = fit(prompt, "language", RULES["language"], None, **LIMITS)
    assert no_model is not None and no_model.proposed_text == expected
    assert (
        fit(prompt + "\n" + RULES["language"], "language", RULES["language"], None, **LIMITS)
        is None
    )


def test_a_block_without_a_heading_is_joined_and_named_no_section(embed) -> None:
    block = "You are the support assistant.\nAnswer questions about orders and returns.\n"
    joined = fit(block, "length", RULES["length"], embed, **LIMITS)
    assert joined is not None and joined.section is None and joined.replaced is None
    assert joined.proposed_text == block + RULES["length"] + "\n"
