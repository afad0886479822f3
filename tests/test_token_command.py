"""`ptgstore token` mints what the server on its data directory accepts, under the policy it runs."""
import os
import subprocess
import sys

import httpx
import jwt
import pytest

from support.servers import live_server, make_settings


def cli(data_dir, *args, stdin=None, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
    return subprocess.run([sys.executable, "-m", "ptgstore", *args, "--data-dir", data_dir], input=stdin, text=True,
                          capture_output=True, timeout=60, env={**clean, **env})


@pytest.fixture
def users_server(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url, auth="users")
    assert cli(settings.data_dir, "user", "add", "alice", "--password-stdin", stdin="s3cret pass\n").returncode == 0
    with live_server(settings) as live:
        yield live


@pytest.mark.slow
def test_token_follows_the_servers_users_policy_and_refuses_unknown_users(users_server):
    data_dir = users_server.settings.data_dir
    # no PTGSTORE_AUTH in this shell: the server's own policy is read from its data directory
    minted = cli(data_dir, "token", "--user", "alice")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert jwt.decode(token, options={"verify_signature": False})["pol"] == "users"
    assert httpx.get(users_server.url + "/streams", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    unknown = cli(data_dir, "token", "--user", "mallory")
    assert unknown.returncode == 1 and "no user 'mallory'" in unknown.stderr and not unknown.stdout
    dev = cli(data_dir, "token", "--user", "alice", PTGSTORE_AUTH="dev")
    assert dev.returncode == 1 and "'users' policy" in dev.stderr and not dev.stdout


def test_token_of_a_dev_server_names_anyone(server):
    minted = cli(server.settings.data_dir, "token", "--user", "lab")
    assert minted.returncode == 0, minted.stderr
    reply = httpx.get(server.url + "/streams", headers={"Authorization": f"Bearer {minted.stdout.strip()}"})
    assert reply.status_code == 200


def test_the_servers_policy_file_is_private(users_server):
    path = os.path.join(users_server.settings.data_dir, "server.json")
    assert os.stat(path).st_mode & 0o077 == 0

