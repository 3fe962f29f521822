import pytest

from app.agent.prompt import chat_prompt
from app.errors import ServiceError
from app.schemas.openai import ChatMessage


def msgs(*pairs: tuple[str, object]) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": r, "content": c}) for r, c in pairs]


def test_a_lone_user_message_is_the_prompt_as_it_is() -> None:
    prompt, request = chat_prompt(msgs(("user", "What is 2+2?")))
    assert prompt == request == "What is 2+2?"


def test_sections_name_instructions_transcript_and_request_in_order() -> None:
    prompt, request = chat_prompt(
        msgs(
            ("system", "Be terse."),
            ("user", "first question"),
            ("assistant", "first answer"),
            ("developer", "Use British spelling."),
            ("user", "second question"),
        )
    )
    assert request == "second question"
    for tag in ("<instructions>", "<transcript>", "<request>"):
        assert tag in prompt
    instructions = prompt.split("<instructions>\n")[1].split("\n</instructions>")[0]
    assert instructions == "Be terse.\n\nUse British spelling."
    transcript = prompt.split("<transcript>\n")[1].split("\n</transcript>")[0]
    assert transcript == "[user]\nfirst question\n\n[assistant]\nfirst answer"
    assert prompt.split("<request>\n")[1] == "second question\n</request>"
    assert "- <transcript>:" in prompt  # the prompt says what each section is


def test_messages_after_the_last_user_message_join_the_transcript() -> None:
    prompt, request = chat_prompt(msgs(("user", "q"), ("assistant", "prefill")))
    assert request == "q"
    assert "[assistant]\nprefill" in prompt.split("<transcript>\n")[1]


def test_text_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert chat_prompt(msgs(("user", parts)))[1] == "one\ntwo"


def test_other_parts_are_refused_as_unsupported_content() -> None:
    parts = [{"type": "image_url", "image_url": {"url": "data:..."}}]
    with pytest.raises(ServiceError) as err:
        chat_prompt(msgs(("user", parts)))
    assert err.value.error == "unsupported content"
    assert "image_url" in str(err.value.detail)


@pytest.mark.parametrize(
    "messages",
    [
        [("system", "only instructions")],
        [("assistant", "no user here")],
        [("user", "   ")],
    ],
)
def test_no_usable_user_message_is_a_400(messages: list[tuple[str, object]]) -> None:
    with pytest.raises(ServiceError) as err:
        chat_prompt(msgs(*messages))
    assert err.value.status_code == 400
