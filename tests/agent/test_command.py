from app.agent.command import MAX_ARGV_PROMPT_BYTES, build_command
from app.proc import child_environment

BASE = dict(claude_bin="claude", model="haiku", permission_mode="acceptEdits", max_budget_usd=2.0)


def test_argv_is_in_the_documented_order_and_ends_options_with_double_dash() -> None:
    command = build_command(prompt="hello", **BASE)
    assert command.argv == (
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        "haiku",
        "--permission-mode",
        "acceptEdits",
        "--max-budget-usd",
        "2",
        "--",
        "hello",
    )
    assert command.stdin is None


def test_agent_and_resume_come_before_the_double_dash() -> None:
    command = build_command(prompt="p", agent="reviewer", resume_session_id="abc", **BASE)
    argv = list(command.argv)
    assert argv[argv.index("--agent") + 1] == "reviewer"
    assert argv[argv.index("--resume") + 1] == "abc"
    assert argv.index("--resume") < argv.index("--") == len(argv) - 2


def test_a_prompt_that_looks_like_an_option_stays_after_the_double_dash() -> None:
    command = build_command(prompt="--help me", **BASE)
    assert command.argv[-2:] == ("--", "--help me")


def test_budget_is_written_as_a_plain_decimal() -> None:
    for amount, text in [(2.0, "2"), (0.25, "0.25"), (0.00001, "0.00001"), (12.5, "12.5")]:
        argv = build_command(prompt="p", **{**BASE, "max_budget_usd": amount}).argv
        assert argv[argv.index("--max-budget-usd") + 1] == text


def test_a_prompt_over_the_argv_limit_goes_to_stdin() -> None:
    prompt = "é" * (MAX_ARGV_PROMPT_BYTES // 2 + 1)  # over the limit in bytes, not in chars
    command = build_command(prompt=prompt, **BASE)
    assert command.argv[-1] == "--"
    assert command.stdin == prompt.encode()


def test_a_prompt_at_the_limit_stays_in_argv() -> None:
    prompt = "a" * MAX_ARGV_PROMPT_BYTES
    command = build_command(prompt=prompt, **BASE)
    assert command.argv[-1] == prompt
    assert command.stdin is None


def test_child_environment_withholds_the_services_secrets_and_claudecode() -> None:
    secrets = {
        "API_BEARER_TOKEN": "secret",
        "API_BEARER_TOKENS_FILE": "/etc/tokens",
        "CLAUDECODE": "1",
        "GIT_REPO_URL": "https://bot:pw@git.example/r.git",
        "DATABASE_URL": "postgresql://u:pw@db/jobs",
        "WEBHOOK_SECRET": "hmac-key",
    }
    env = child_environment({**secrets, "PATH": "/bin", "HOME": "/root"})
    assert env == {"PATH": "/bin", "HOME": "/root"}
    # .env's variables come under the environment's, and are filtered the same way
    assert child_environment({"PATH": "/bin"}, {**secrets, "ANTHROPIC_API_KEY": "k"}) == {
        "PATH": "/bin",
        "ANTHROPIC_API_KEY": "k",
    }


def test_allowed_tools_also_name_the_only_tools_the_cli_offers() -> None:
    allowed = ("Read", "Bash(git:*)", "Bash")
    argv = list(build_command(prompt="p", allowed_tools=allowed, **BASE).argv)
    tools = argv[argv.index("--tools") + 1 : argv.index("--allowedTools")]
    assert tools == ["Read", "Bash"]  # --allowedTools alone only approves calls
    assert tuple(argv[argv.index("--allowedTools") + 1 : argv.index("--")]) == allowed
