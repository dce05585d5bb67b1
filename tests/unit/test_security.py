"""Unit tests for parsl_dragon.wire.security: key files on disk and real CURVE sockets."""
from __future__ import annotations

import logging
import os
import stat
import threading
import time

import pytest
import zmq

from parsl_dragon.errors import ConfigurationError, DragonExecutorError, InsecureKeyPath, InsecurePath
from parsl_dragon.server.auth import CLIENT_DOMAIN, WORKER_DOMAIN, start_authenticator
from parsl_dragon.wire import security
from tests.conftest import OTHER_UID

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Run a test under a chosen umask, restoring the old one afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


# ---------------------------------------------------------------- key directory and files

@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_key_dir_created_0700_and_secret_0600(tmp_path, umask, mask):
    umask(mask)
    key_dir = tmp_path / "nested" / "keys"
    pair = security.load_pair(str(key_dir), security.CLIENT)
    assert _mode(key_dir) == 0o700
    assert _mode(key_dir / "client.key_secret") == 0o600
    assert (key_dir / "client.key").is_file()
    assert sorted(os.listdir(key_dir)) == ["client.key", "client.key_secret"]
    assert len(pair.public) == 40 and len(pair.secret) == 40


def test_secret_file_is_never_readable_by_others_even_transiently(tmp_path, umask):
    # created under umask 077, so no moment exists where the secret is world-readable
    umask(0o000)
    security.load_pair(str(tmp_path / "k"), security.SERVER)
    assert _mode(tmp_path / "k" / "server.key_secret") & 0o077 == 0


def test_keys_are_valid_curve_pairs(tmp_path):
    pair = security.load_pair(str(tmp_path / "keys"), security.SERVER)
    assert zmq.curve_public(pair.secret) == pair.public
    assert security.load_public(str(tmp_path / "keys"), security.SERVER) == pair.public


def test_load_pair_is_stable_across_calls(tmp_path):
    key_dir = str(tmp_path / "keys")
    first = security.load_pair(key_dir, security.CLIENT)
    mtime = os.stat(os.path.join(key_dir, "client.key_secret")).st_mtime_ns
    second = security.load_pair(key_dir, security.CLIENT)
    third = security.load_pair(key_dir, security.CLIENT, create=False)
    assert first == second == third
    assert os.stat(os.path.join(key_dir, "client.key_secret")).st_mtime_ns == mtime


def test_client_and_server_pairs_differ(tmp_path):
    key_dir = str(tmp_path / "keys")
    client = security.load_pair(key_dir, security.CLIENT)
    server = security.load_pair(key_dir, security.SERVER)
    assert client.public != server.public
    assert client.secret != server.secret
    assert sorted(os.listdir(key_dir)) == ["client.key", "client.key_secret", "server.key", "server.key_secret"]


def test_existing_directory_with_0700_is_accepted(tmp_path):
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    os.chmod(key_dir, 0o700)
    security.load_pair(str(key_dir), security.CLIENT)
    assert _mode(key_dir) == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o770])
def test_refuses_too_open_directory(tmp_path, mode):
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    os.chmod(key_dir, mode)
    with pytest.raises(InsecureKeyPath) as info:
        security.load_pair(str(key_dir), security.CLIENT)
    message = str(info.value)
    assert str(key_dir) in message
    assert f"{mode:04o}" in message
    assert "0700" in message
    assert os.listdir(key_dir) == []  # nothing was created in the insecure directory
    assert _mode(key_dir) == mode  # and its mode was not silently changed


def test_refuses_0755_directory_even_with_existing_keys(tmp_path):
    key_dir = tmp_path / "keys"
    security.load_pair(str(key_dir), security.CLIENT)
    os.chmod(key_dir, 0o755)
    with pytest.raises(InsecureKeyPath, match="0755"):
        security.load_pair(str(key_dir), security.CLIENT, create=False)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_refuses_too_open_secret_file(tmp_path, mode):
    key_dir = tmp_path / "keys"
    security.load_pair(str(key_dir), security.CLIENT)
    secret = key_dir / "client.key_secret"
    os.chmod(secret, mode)
    with pytest.raises(InsecureKeyPath) as info:
        security.load_pair(str(key_dir), security.CLIENT)
    message = str(info.value)
    assert str(secret) in message
    assert f"{mode:04o}" in message
    assert "0600" in message
    assert "chmod 600" in message


def test_secret_never_in_error_or_log_messages(tmp_path, caplog):
    key_dir = tmp_path / "keys"
    with caplog.at_level(logging.DEBUG, logger="parsl_dragon.wire.security"):
        pair = security.load_pair(str(key_dir), security.CLIENT)
    assert caplog.records, "creating keys should be logged"
    for record in caplog.records:
        assert pair.secret.decode() not in record.getMessage()
    os.chmod(key_dir / "client.key_secret", 0o644)
    with pytest.raises(InsecureKeyPath) as info:
        security.load_pair(str(key_dir), security.CLIENT)
    assert pair.secret.decode() not in str(info.value)


def test_insecure_key_path_is_a_configuration_error():
    assert issubclass(InsecureKeyPath, ConfigurationError)
    assert issubclass(InsecureKeyPath, DragonExecutorError)


def test_create_false_on_empty_dir_raises(tmp_path):
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    os.chmod(key_dir, 0o700)
    with pytest.raises(ConfigurationError) as info:
        security.load_pair(str(key_dir), security.SERVER, create=False)
    assert not isinstance(info.value, InsecureKeyPath)
    assert "no server key" in str(info.value)
    assert str(key_dir / "server.key_secret") in str(info.value)
    assert os.listdir(key_dir) == []


def test_key_path_that_is_a_file_is_rejected(tmp_path):
    path = tmp_path / "not-a-dir"
    path.write_text("x")
    with pytest.raises(ConfigurationError, match="is not a directory"):
        security.load_pair(str(path), security.CLIENT)


def test_damaged_secret_file_raises_configuration_error(tmp_path):
    key_dir = tmp_path / "keys"
    security.load_pair(str(key_dir), security.CLIENT)
    secret = key_dir / "client.key_secret"
    secret.write_text("this is not a certificate\n")
    os.chmod(secret, 0o600)
    with pytest.raises(ConfigurationError):
        security.load_pair(str(key_dir), security.CLIENT)


def test_load_public_missing_raises_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read public key"):
        security.load_public(str(tmp_path), security.SERVER)


def test_load_public_needs_no_secret(tmp_path):
    key_dir = tmp_path / "keys"
    pair = security.load_pair(str(key_dir), security.SERVER)
    os.unlink(key_dir / "server.key_secret")
    assert security.load_public(str(key_dir), security.SERVER) == pair.public


def test_keypair_repr_hides_secret():
    pair = security.ephemeral_pair()
    text = repr(pair)
    assert pair.secret.decode() not in text
    assert "<hidden>" in text
    assert pair.public.decode() in text
    assert pair.secret.decode() not in str(pair)


def test_ephemeral_pairs_are_fresh_and_valid():
    a, b = security.ephemeral_pair(), security.ephemeral_pair()
    assert a != b
    assert zmq.curve_public(a.secret) == a.public


def test_insecure_key_path_is_an_insecure_path():
    assert issubclass(InsecureKeyPath, InsecurePath)
    assert issubclass(InsecurePath, ConfigurationError)


def test_refuses_key_directory_of_another_user(tmp_path):
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    os.chown(key_dir, OTHER_UID, -1)
    with pytest.raises(InsecureKeyPath, match=f"belongs to uid {OTHER_UID}"):
        security.load_pair(str(key_dir), security.CLIENT)
    assert os.listdir(key_dir) == []


def test_processes_racing_to_create_the_first_pair_all_use_one_pair(tmp_path, monkeypatch):
    """Each racer writes its pair slowly, one after another: without care, each would load its own."""
    real_create = zmq.auth.create_certificates
    order = iter(range(100))

    def slow_create(key_dir, name):
        time.sleep(0.05 * next(order))  # racers finish writing at different moments
        return real_create(key_dir, name)

    monkeypatch.setattr(zmq.auth, "create_certificates", slow_create)
    key_dir = str(tmp_path / "keys")
    barrier = threading.Barrier(6)
    pairs = []

    def load():
        barrier.wait()
        pairs.append(security.load_pair(key_dir, security.CLIENT))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pairs) == 6 and len(set(pairs)) == 1
    assert security.load_public(key_dir, security.CLIENT) == pairs[0].public
    assert security.load_pair(key_dir, security.CLIENT, create=False) == pairs[0]
    assert sorted(os.listdir(key_dir)) == ["client.key", "client.key_secret"]
    assert _mode(os.path.join(key_dir, "client.key_secret")) == 0o600


# ---------------------------------------------------------------- private directories and trusted files

@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_private_directory_makes_the_leaf_exactly_0700_and_its_parents(tmp_path, umask, mask):
    umask(mask)
    path = tmp_path / "a" / "b" / "leaf"
    security.private_directory(str(path))
    assert path.is_dir() and _mode(path) == 0o700
    assert (tmp_path / "a" / "b").is_dir()


def test_private_directory_mode_is_exact_even_under_a_umask_masking_the_owner(tmp_path, umask):
    umask(0o277)
    security.private_directory(str(tmp_path / "leaf"))
    assert _mode(tmp_path / "leaf") == 0o700


def test_private_directory_accepts_our_own_directory_and_tightens_it_to_0700(tmp_path):
    path = tmp_path / "runinfo"
    path.mkdir()
    os.chmod(path, 0o755)
    security.private_directory(str(path))
    assert _mode(path) == 0o700  # ours, so accepted; what it holds is nobody else's business
    security.private_directory(str(path))
    assert _mode(path) == 0o700


def test_private_directory_replaced_by_a_symlink_after_the_check_is_refused(tmp_path, monkeypatch):
    path, elsewhere = tmp_path / "block", tmp_path / "elsewhere"
    path.mkdir(mode=0o700)
    elsewhere.mkdir(mode=0o755)
    os.chmod(elsewhere, 0o755)
    real_check = security.check_trusted_directory

    def check_then_swap(target, what="directory"):
        real_check(target, what)
        os.rmdir(target)
        os.symlink(elsewhere, target)  # someone swaps it between our check and our chmod

    monkeypatch.setattr(security, "check_trusted_directory", check_then_swap)
    with pytest.raises(InsecurePath, match="replaced while being checked"):
        security.private_directory(str(path))
    assert _mode(elsewhere) == 0o755, "the chmod followed the symlink"


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777, 0o1777, 0o720])
def test_private_directory_refuses_one_others_can_write(tmp_path, mode):
    path = tmp_path / "shared"
    path.mkdir()
    os.chmod(path, mode)
    with pytest.raises(InsecurePath) as info:
        security.private_directory(str(path))
    message = str(info.value)
    assert str(path) in message and f"mode {mode:04o}" in message and "owner uid 0" in message
    assert "can write it" in message and f"chmod go-w {path}" in message
    assert _mode(path) == mode  # refused, not silently changed


def test_private_directory_refuses_one_of_another_user(tmp_path):
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(InsecurePath) as info:
        security.private_directory(str(path))
    message = str(info.value)
    assert str(path) in message and f"owner uid {OTHER_UID}" in message and "mode 0700" in message
    assert f"belongs to uid {OTHER_UID}, not to you (uid {os.geteuid()})" in message
    assert "choose another path" in message


def test_private_directory_refuses_a_symlink_even_to_our_own_directory(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InsecurePath, match=f"{link} .*symbolic link.*use the real path \\({real}\\)"):
        security.private_directory(str(link))


def test_private_directory_refuses_a_dangling_symlink_and_creates_nothing(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    with pytest.raises(InsecurePath, match="symbolic link"):
        security.private_directory(str(link))
    assert not (tmp_path / "target").exists()


def test_private_directory_refuses_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(InsecurePath, match="it is a regular file, not a directory"):
        security.private_directory(str(path))


def test_private_directory_made_by_another_process_meanwhile_is_checked(tmp_path, monkeypatch):
    path = tmp_path / "raced"
    real_mkdir = os.mkdir

    def beaten(target, mode=0o777):
        real_mkdir(target, 0o777)
        os.chmod(target, 0o777)
        os.chown(target, OTHER_UID, -1)  # someone else made it first
        raise FileExistsError(target)

    monkeypatch.setattr(os, "mkdir", beaten)
    with pytest.raises(InsecurePath, match=f"owner uid {OTHER_UID}"):
        security.private_directory(str(path))


def test_check_trusted_file_accepts_our_own_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    os.chmod(path, 0o644)
    security.check_trusted_file(str(path))


@pytest.mark.parametrize("spoil, why", [
    (lambda p: os.chmod(p, 0o664), "can write it"),
    (lambda p: os.chmod(p, 0o646), "can write it"),
    (lambda p: os.chown(p, OTHER_UID, -1), f"belongs to uid {OTHER_UID}"),
])
def test_check_trusted_file_refuses_others_files(tmp_path, spoil, why):
    path = tmp_path / "file"
    path.write_text("x")
    spoil(path)
    with pytest.raises(InsecurePath, match=f"refusing secret thing {path} .*{why}"):
        security.check_trusted_file(str(path), "secret thing")


def test_check_trusted_file_refuses_symlinks_and_fifos(tmp_path):
    real = tmp_path / "real"
    real.write_text("x")
    (tmp_path / "link").symlink_to(real)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InsecurePath, match="symbolic link"):
        security.check_trusted_file(str(tmp_path / "link"))
    with pytest.raises(InsecurePath, match="it is a FIFO, not a regular file"):
        security.check_trusted_file(str(tmp_path / "fifo"))


# ---------------------------------------------------------------- real CURVE round trip

@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def keys(tmp_path):
    key_dir = str(tmp_path / "keys")
    return {
        "server": security.load_pair(key_dir, security.SERVER),
        "client": security.load_pair(key_dir, security.CLIENT),
        "worker": security.ephemeral_pair(),
        "stranger": security.ephemeral_pair(),
    }


@pytest.fixture
def authenticator(context, keys):
    auth = start_authenticator(context, [keys["client"].public], [keys["worker"].public])
    yield auth
    auth.stop()


def _router(context, keys, domain=CLIENT_DOMAIN):
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    security.make_curve_server(router, keys["server"].secret, domain)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, f"tcp://127.0.0.1:{port}"


def _dealer(context, secret, server_public, address):
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    security.make_curve_client(dealer, secret, server_public)
    dealer.connect(address)
    return dealer


def _receive(socket, timeout_ms):
    if socket.poll(timeout_ms, zmq.POLLIN):
        return socket.recv_multipart()
    return None


def _denials(caplog):
    return [r for r in caplog.records
            if r.name == "parsl_dragon.server.auth" and r.levelno == logging.WARNING
            and "Denied connection" in r.getMessage()]


def test_make_curve_server_and_client_set_socket_options(context, keys):
    server = context.socket(zmq.ROUTER)
    client = context.socket(zmq.DEALER)
    try:
        security.make_curve_server(server, keys["server"].secret, "clients")
        security.make_curve_client(client, keys["client"].secret, keys["server"].public)
        assert server.mechanism == zmq.CURVE and client.mechanism == zmq.CURVE
        assert server.curve_server == 1
        assert client.curve_server == 0
        assert server.zap_domain == b"clients"
    finally:
        server.close(0)
        client.close(0)


def test_curve_round_trip_with_trusted_client(context, keys, authenticator, caplog):
    caplog.set_level(logging.DEBUG, logger="parsl_dragon.server.auth")
    router, address = _router(context, keys)
    dealer = _dealer(context, keys["client"].secret, keys["server"].public, address)
    dealer.send_multipart([b"hello", b"payload"])
    frames = _receive(router, 5000)
    assert frames is not None, "trusted client did not get through"
    identity, *body = frames
    assert body == [b"hello", b"payload"]
    # and back
    router.send_multipart([identity, b"welcome"])
    assert _receive(dealer, 5000) == [b"welcome"]
    assert _denials(caplog) == []
    dealer.close(0)
    router.close(0)


def test_untrusted_client_is_denied_and_logged(context, keys, authenticator, caplog):
    caplog.set_level(logging.DEBUG, logger="parsl_dragon.server.auth")
    router, address = _router(context, keys)
    stranger = _dealer(context, keys["stranger"].secret, keys["server"].public, address)
    stranger.send_multipart([b"let me in"])
    assert _receive(router, 1000) is None
    deadline = time.monotonic() + 5
    while not _denials(caplog) and time.monotonic() < deadline:
        time.sleep(0.05)
    denials = _denials(caplog)
    assert denials, "denial was not logged"
    message = denials[0].getMessage()
    assert keys["stranger"].public.decode() in message
    assert repr(CLIENT_DOMAIN) in message

    # a trusted client on the same server still gets through afterwards
    friend = _dealer(context, keys["client"].secret, keys["server"].public, address)
    friend.send_multipart([b"ok"])
    frames = _receive(router, 5000)
    assert frames is not None and frames[1:] == [b"ok"]
    for sock in (stranger, friend, router):
        sock.close(0)


def test_client_key_is_not_trusted_in_worker_domain(context, keys, authenticator, caplog):
    caplog.set_level(logging.DEBUG, logger="parsl_dragon.server.auth")
    router, address = _router(context, keys, domain=WORKER_DOMAIN)
    client = _dealer(context, keys["client"].secret, keys["server"].public, address)
    client.send_multipart([b"not a worker"])
    assert _receive(router, 1000) is None
    worker = _dealer(context, keys["worker"].secret, keys["server"].public, address)
    worker.send_multipart([b"ready"])
    frames = _receive(router, 5000)
    assert frames is not None and frames[1:] == [b"ready"]
    assert any(repr(WORKER_DOMAIN) in r.getMessage() for r in _denials(caplog))
    for sock in (client, worker, router):
        sock.close(0)


def test_client_with_wrong_server_key_does_not_get_through(context, keys, authenticator):
    router, address = _router(context, keys)
    impostor_server_key = security.ephemeral_pair().public
    dealer = _dealer(context, keys["client"].secret, impostor_server_key, address)
    dealer.send_multipart([b"hello"])
    assert _receive(router, 1000) is None
    dealer.close(0)
    router.close(0)


def test_plaintext_client_does_not_get_through(context, keys, authenticator):
    router, address = _router(context, keys)
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(address)
    dealer.send_multipart([b"hello"])
    assert _receive(router, 1000) is None
    dealer.close(0)
    router.close(0)
