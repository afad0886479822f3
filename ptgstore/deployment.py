"""What a deployment lacks before it may serve: checked at start-up."""
from __future__ import annotations

from .settings import Settings
from .users import read_users


def ephemeral_disk_problems(settings: Settings) -> list[str]:
    """What a host whose disk vanishes at each restart (PTGSTORE_EPHEMERAL_DISK=true) lacks: a
    generated secret, users added there or an embedded Redis would be lost."""
    problems = []
    if not settings.secret:
        problems.append("PTGSTORE_SECRET (a generated one would change at each restart, ending every token)")
    if settings.redis_url is None:
        problems.append("PTGSTORE_REDIS_URL (the embedded Redis would lose every entry at each restart)")
    if not settings.allowed_hosts:
        problems.append("PTGSTORE_ALLOWED_HOSTS (the name clients reach the app by, e.g. myapp.example.com: "
                        "requests for other names are refused)")
    if settings.auth != "users":
        problems.append("PTGSTORE_AUTH=users (the dev policy accepts anyone)")
    elif not settings.users_file:
        problems.append("PTGSTORE_USERS_FILE (a users file deployed with the app: one made there is lost)")
    else:
        try:
            users = read_users(settings.users_path)
        except (OSError, ValueError) as exc:
            users, reason = {}, str(exc)
        else:
            reason = "it holds no users"
        if not users:
            problems.append(f"PTGSTORE_USERS_FILE={settings.users_file} ({reason}; "
                            f"make it with `PTGSTORE_USERS_FILE={settings.users_file} ptgstore user add NAME` "
                            "and deploy it)")
    return problems
