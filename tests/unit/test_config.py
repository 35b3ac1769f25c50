"""Configuration: defaults, the YAML file, OFFICERAY_* variables, explicit overrides, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from officeray.config import CONFIG_ENV_VAR, SandboxLimits, Settings, StepRetryPolicy, load_settings
from officeray.contracts import ErrorType
from officeray.errors import ConfigError
from officeray.limits import MAX_OUTPUT_BYTES


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OFFICERAY_* variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("OFFICERAY_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "officeray.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.workflow.max_iterations == 3
    assert settings.workflow.step_retry.maximum_attempts == 2
    assert ErrorType.TOOL_ERROR in settings.workflow.step_retry.non_retryable_error_types
    assert settings.serve.host == "127.0.0.1"
    assert settings.serve.port == 8000
    assert settings.store.url.startswith("sqlite:///")
    assert settings.sandbox.backend == "docker"
    assert settings.runners.count == 4


def test_yaml_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
workflow:
  max_iterations: 5
  step_retry:
    maximum_attempts: 4
    non_retryable_error_types: [tool_error]
serve:
  port: 9001
store:
  url: sqlite:///elsewhere.db
sandbox:
  backend: local
""",
    )
    settings = load_settings(path)
    assert settings.workflow.max_iterations == 5
    assert settings.workflow.step_retry.maximum_attempts == 4
    assert settings.workflow.step_retry.non_retryable_error_types == [ErrorType.TOOL_ERROR]
    assert settings.serve.port == 9001
    assert settings.serve.host == "127.0.0.1"  # untouched keys keep their defaults
    assert settings.store.url == "sqlite:///elsewhere.db"
    assert settings.sandbox.backend == "local"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).workflow.max_iterations == 3


def test_config_file_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV_VAR, str(write(tmp_path, "serve:\n  port: 9100\n")))
    assert load_settings().serve.port == 9100


def test_environment_variable_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "workflow:\n  max_iterations: 5\n  max_concurrent_tasks: 10\n")
    monkeypatch.setenv("OFFICERAY_WORKFLOW__MAX_ITERATIONS", "7")
    settings = load_settings(path)
    assert settings.workflow.max_iterations == 7
    assert settings.workflow.max_concurrent_tasks == 10  # the file's other keys in that section stay


def test_environment_variable_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFICERAY_SERVE__PORT", "8500")
    monkeypatch.setenv("OFFICERAY_RAY_NAMESPACE", "testing")
    settings = load_settings()
    assert settings.serve.port == 8500
    assert settings.ray_namespace == "testing"


def test_explicit_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "serve:\n  port: 9001\n  host: 0.0.0.0\n")
    monkeypatch.setenv("OFFICERAY_SERVE__PORT", "9002")
    settings = load_settings(path, **{"serve.port": 8123})
    assert settings.serve.port == 8123
    assert settings.serve.host == "0.0.0.0"  # the rest of the section is kept


def test_overrides_of_none_are_ignored(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, "serve:\n  port: 9001\n"), **{"serve.port": None, "serve.host": None}
    )
    assert settings.serve.port == 9001
    assert settings.serve.host == "127.0.0.1"


def test_nested_and_top_level_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFICERAY_RAY_NAMESPACE", "from-env")
    settings = load_settings(
        **{"workflow.step_retry.maximum_attempts": 5, "ray_namespace": "from-cli", "serve.port": "8124"}
    )
    assert settings.workflow.step_retry.maximum_attempts == 5
    assert settings.workflow.step_retry.initial_interval_s == 0.2
    assert settings.ray_namespace == "from-cli"
    assert settings.serve.port == 8124  # validated and converted like any other value
    assert isinstance(settings, Settings)


def test_overrides_do_not_change_other_settings_objects() -> None:
    base = load_settings()
    load_settings(**{"serve.port": 8123})
    assert base.serve.port == 8000


def test_bad_value_in_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "workflow:\n  max_iterations: 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "workflow.max_iterations" in message
    assert "greater than or equal to 1" in message
    assert str(path) in message


def test_bad_value_in_environment_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFICERAY_WORKFLOW__MAX_ITERATIONS", "lots")
    with pytest.raises(ConfigError, match=r"workflow\.max_iterations"):
        load_settings()


def test_bad_override_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**{"serve.port": 70000})
    assert "serve.port" in str(info.value)
    assert "less than or equal to 65535" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("workflow:\n  max_iteration: 3\n", "workflow.max_iteration", id="misspelled-nested"),
        pytest.param("wrkflow:\n  max_iterations: 3\n", "wrkflow", id="misspelled-section"),
        pytest.param("serve:\n  gateway:\n    replicas: 2\n", "serve.gateway.replicas", id="deep"),
    ],
)
def test_unknown_key_in_file(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert f"{key}: unknown key" in str(info.value)


@pytest.mark.parametrize("dotted", ["serve.prot", "nothing.port", "serve.port.deeper"])
def test_unknown_override_key(dotted: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**{dotted: 1})
    assert f"{dotted}: unknown key" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_settings(missing)
    assert str(missing) in str(info.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "workflow: [unclosed\n"))


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"))


# -- the step retry policy -----------------------------------------------------------------------


def test_retry_delay_grows_by_the_backoff_coefficient() -> None:
    policy = StepRetryPolicy(
        initial_interval_s=0.5, backoff_coefficient=3.0, maximum_interval_s=100, jitter=0
    )
    assert [policy.delay_s(attempt, 0.3) for attempt in (1, 2, 3, 4)] == pytest.approx([0.5, 1.5, 4.5, 13.5])


def test_retry_delay_is_capped() -> None:
    policy = StepRetryPolicy(initial_interval_s=1, backoff_coefficient=2, maximum_interval_s=5, jitter=0)
    assert [policy.delay_s(attempt, 0.5) for attempt in range(1, 8)] == [1, 2, 4, 5, 5, 5, 5]


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.75, 0.999999])
def test_retry_jitter_stays_in_bounds(rand: float) -> None:
    policy = StepRetryPolicy(initial_interval_s=1, backoff_coefficient=2, maximum_interval_s=5, jitter=0.2)
    for attempt in range(1, 10):
        base = min(1 * 2 ** (attempt - 1), 5)
        delay = policy.delay_s(attempt, rand)
        assert base * 0.8 - 1e-9 <= delay <= base * 1.2 + 1e-9
        assert delay <= policy.maximum_interval_s  # the cap holds for jittered waits too


def test_retry_jitter_ends_of_the_range() -> None:
    policy = StepRetryPolicy(initial_interval_s=1, jitter=0.25, maximum_interval_s=10)
    assert policy.delay_s(1, 0.0) == pytest.approx(0.75)
    assert policy.delay_s(1, 0.5) == pytest.approx(1.0)
    assert policy.delay_s(1, 0.99) == pytest.approx(1.245)


def test_retryable_error_types() -> None:
    policy = StepRetryPolicy()
    assert policy.retryable(ErrorType.SANDBOX_ERROR)
    assert policy.retryable(ErrorType.TIMEOUT)
    assert not policy.retryable(ErrorType.TOOL_ERROR)
    assert not policy.retryable(ErrorType.BAD_INPUT)


def test_retry_policy_refuses_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"workflow\.step_retry\.jitter"):
        load_settings(write(tmp_path, "workflow:\n  step_retry:\n    jitter: 1.5\n"))
    with pytest.raises(ConfigError, match=r"workflow\.step_retry\.non_retryable_error_types"):
        load_settings(write(tmp_path, "workflow:\n  step_retry:\n    non_retryable_error_types: [oops]\n"))


# -- the sandbox limits --------------------------------------------------------------------------


def test_sandbox_limits_are_typed_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sandbox.limits`` is a model of the config: checked at load, set by file, environment or
    override like any other section, and the default output cap is the agent's own."""
    assert Settings().sandbox.limits == SandboxLimits()
    assert SandboxLimits().output_bytes == MAX_OUTPUT_BYTES
    settings = load_settings(write(tmp_path, "sandbox:\n  limits:\n    memory_mb: 256\n    cpus: 0.5\n"))
    assert (settings.sandbox.limits.memory_mb, settings.sandbox.limits.cpus) == (256, 0.5)
    assert settings.sandbox.limits.pids == SandboxLimits().pids
    monkeypatch.setenv("OFFICERAY_SANDBOX__LIMITS__PIDS", "64")
    assert load_settings(**{"sandbox.limits.tmp_mb": 8}).sandbox.limits.model_dump(
        include={"pids", "tmp_mb"}
    ) == {"pids": 64, "tmp_mb": 8}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("memory_mb: 8", "sandbox.limits.memory_mb: Input should be greater than or equal to 32"),
        ("cpus: 0", "sandbox.limits.cpus: Input should be greater than 0"),
        ("memory: 512", "sandbox.limits.memory: unknown key"),
    ],
)
def test_bad_sandbox_limits_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, f"sandbox:\n  limits:\n    {text}\n"))
    assert message in str(info.value)


def test_tenant_entries_inherit_default_from_a_file_and_from_overrides(tmp_path: Path) -> None:
    config = tmp_path / "officeray.yaml"
    config.write_text(
        "tenants:\n"
        "  default: {submit_per_s: 2.0, max_dlq_retries: 1}\n"
        "  acme: {submit_per_s: 50.0, submit_burst: 200}\n"
    )
    from_file = load_settings(config)
    assert from_file.tenant_limits("acme").submit_burst == 200
    assert from_file.tenant_limits("acme").max_dlq_retries == 1  # from default
    assert from_file.tenant_limits("unknown").submit_per_s == 2.0  # a tenant without an entry
    overridden = load_settings(None, tenants={"default": {"max_token_budget": 10}, "acme": {}})
    assert overridden.tenant_limits("acme").max_token_budget == 10


def test_a_bad_tenant_limit_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "officeray.yaml"
    config.write_text("tenants:\n  acme: {submit_per_s: -1}\n")
    with pytest.raises(ConfigError, match=r"tenants\.acme\.submit_per_s"):
        load_settings(config)
