import base64

import pytest

from app.agent.prompt import chat_prompt, message_images
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
    parts = [{"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}}]
    with pytest.raises(ServiceError) as err:
        chat_prompt(msgs(("user", parts)))
    assert err.value.error == "unsupported content"
    assert "only text and image_url are" in str(err.value.detail)


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()


def test_a_data_url_image_becomes_an_image_block() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    (message,) = msgs(("user", parts))
    assert chat_prompt([message])[1] == "what is this?"
    assert message_images(message) == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    ]
    only_image = msgs(("user", parts[1:]))
    assert chat_prompt(only_image)[1] == "(see the image)"


@pytest.mark.parametrize(
    ("url", "error", "words"),
    [
        ("https://example.com/cat.png", "unsupported content", "does not fetch remote images"),
        (f"data:image/svg+xml;base64,{PNG}", "unsupported content", "image/webp"),
        ("data:image/png,not-base64-marked", "unsupported content", "base64 data"),
        ("data:image/png;base64,@@@", "invalid request", "not valid base64"),
        (
            "data:image/png;base64," + base64.b64encode(b"x" * (5 * 2**20 + 1)).decode(),
            "invalid request",
            "at most 5242880 bytes",
        ),
    ],
)
def test_images_the_service_will_not_send_are_refused(url: str, error: str, words: str) -> None:
    (message,) = msgs(("user", [{"type": "image_url", "image_url": {"url": url}}]))
    with pytest.raises(ServiceError) as err:
        message_images(message)
    assert err.value.error == error and words in str(err.value.detail)


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
