"""The installed environment is stable: repeated `uv run` must not reinstall anything."""

from importlib import metadata

from packaging.tags import parse_tag, sys_tags


def test_every_installed_wheel_declares_tags_this_interpreter_supports():
    # uv (like pip) trusts the Tag lines of an installed wheel's WHEEL file; a wheel whose
    # internal tag contradicts its filename (decord 0.6.0 says cp36 inside) is judged
    # incompatible after install and reinstalled on every `uv run`.
    supported = set(sys_tags())
    mismatched = []
    for dist in metadata.distributions():
        wheel = dist.read_text("WHEEL")
        if not wheel:
            continue
        tags = {t for line in wheel.splitlines() if line.startswith("Tag:")
                for t in parse_tag(line.split(":", 1)[1].strip())}
        if tags and not tags & supported:
            mismatched.append(f"{dist.metadata['Name']} {dist.version}: {sorted(map(str, tags))}")
    assert mismatched == []
