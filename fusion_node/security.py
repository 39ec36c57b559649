"""CURVE on network hops: key files, the rule for plain endpoints, ZAP allow-lists, handshake counts.

Every hop that leaves the host is encrypted and authenticated with ZeroMQ's CURVE mechanism
(CurveZMQ: Curve25519 keys, per-connection session keys). The side that binds is the CURVE
server and holds a key pair; the side that connects knows the server's public key in advance and
proves its own key, which the server checks against an allow-list through ZAP. So:

* a sensor (binds XPUB) is a server: ``--secret-key`` is its key pair, ``--allow`` the public
  keys of the nodes that may subscribe;
* the node connects its SUB as a client to each sensor whose ``public_key_file`` it is given,
  with its own key pair ``node.secret_key_file``; a publisher that cannot prove that key is
  refused by the handshake and counted (``stats.security.handshake_failed``);
* the node's PUB is a server for the consumers listed in ``node.allow_subscribers``.

Plain (unencrypted) endpoints stay allowed only where nothing crosses a network: ``ipc://``,
``inproc://`` and ``tcp://`` on a loopback address. Any other endpoint without keys is refused
with one line, unless the config says ``insecure: true`` (``--insecure`` on the command line).

Key files are the ZeroMQ certificate format (``zmq.auth.load_certificate`` reads them):
``NAME.key`` holds the public key, ``NAME.key_secret`` both keys and is created with mode 0600;
a secret file that others can read is refused, like ssh does.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import ConfigError

__all__ = ["KeyPair", "ServerSecurity", "new_key_pair", "load_key_pair", "load_public_key", "load_allow_list",
           "plain_allowed", "require_secure", "serve_curve", "client_keys", "connect_client", "release_server",
           "HANDSHAKE_FAILURES", "NodeSecurity", "PUBLIC_SUFFIX", "SECRET_SUFFIX"]

log = logging.getLogger("fusion.security")

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_Z85_KEY = re.compile(rb"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves Z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes = field(repr=False)  # never in a log line or a traceback


@dataclass(frozen=True)
class ServerSecurity:
    """What a binding socket needs for CURVE: its key pair and the client keys it lets in."""

    keys: KeyPair
    allowed: frozenset[bytes]


# -- key files ------------------------------------------------------------------------------

def _cert_text(kind: str, public: bytes, secret: bytes | None = None) -> str:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [f"#   ZeroMQ CURVE {kind} certificate, written by `fusion keys new` on {stamp}",
             "metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def _write_new(path: Path, text: str, mode: int) -> None:
    # O_EXCL: never overwrite a key; the mode is set at creation, so the secret is never
    # readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)  # the umask may have narrowed it; make the public file readable again


def new_key_pair(name: str, directory: str | Path = ".") -> tuple[Path, Path, bytes]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (0600) under ``directory``; returns both paths and the
    public key. Refuses to overwrite an existing key."""
    if not _NAME.match(name):
        raise ConfigError(f"fusion keys: key name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    for path in (public_path, secret_path):
        if path.exists() or path.is_symlink():
            raise ConfigError(f"fusion keys: {path} exists; remove it first or pick another name")
    public, secret = zmq.curve_keypair()
    _write_new(secret_path, _cert_text("secret", public, secret), 0o600)
    _write_new(public_path, _cert_text("public", public), 0o644)
    return public_path, secret_path, public


def _read_cert(path: str | Path, what: str) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: no key file {path} (make one with `fusion keys new NAME`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: {path} is not a key file written by `fusion keys new` ({exc})") from None
    for key in (public, secret):
        if key is not None and not _Z85_KEY.match(key):
            raise ConfigError(f"{what}: {path} holds a malformed key (a CURVE key is 40 Z85 characters)")
    return public, secret


def load_key_pair(path: str | Path, what: str) -> KeyPair:
    """Read a ``.key_secret`` file; refused when it holds no secret or others may read it."""
    path = Path(path)
    public, secret = _read_cert(path, what)
    if secret is None:
        raise ConfigError(f"{what}: {path} holds only a public key; give the {SECRET_SUFFIX} file")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{what}: secret key {path} is readable by others (mode {mode:04o}); "
                          f"run: chmod 600 {path}")
    return KeyPair(public, secret)


def load_public_key(path: str | Path, what: str) -> bytes:
    """The public key of a ``.key`` file (or of a ``.key_secret`` file, whose secret is not kept)."""
    return _read_cert(path, what)[0]


def load_allow_list(specs: Iterable[str | Path], what: str) -> frozenset[bytes]:
    """Public keys from key files and folders of ``*.key`` files; refused when it comes out empty."""
    keys: set[bytes] = set()
    for spec in specs:
        spec = Path(spec)
        files = sorted(spec.glob(f"*{PUBLIC_SUFFIX}")) if spec.is_dir() else [spec]
        keys.update(load_public_key(f, what) for f in files)
    if not keys:
        raise ConfigError(f"{what}: the allow-list holds no public key (give {PUBLIC_SUFFIX} files or folders "
                          f"of them)")
    return frozenset(keys)


# -- the rule for plain endpoints -------------------------------------------------------------

def plain_allowed(endpoint: str) -> bool:
    """True where no byte can leave the host: ipc://, inproc://, tcp:// on a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].split(";")[-1].strip("[]")  # "src;dst:port" connects from src to dst
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: may be reachable from the network


def require_secure(endpoint: str, secured: bool, insecure: bool, what: str, fix: str) -> None:
    """ConfigError for a network endpoint with neither keys nor an explicit ``insecure``."""
    if secured or insecure or plain_allowed(endpoint):
        return
    raise ConfigError(f"{what}: {endpoint} is reachable from the network and has no CURVE keys; {fix}, "
                      f"or allow it plain (unencrypted, unauthenticated) with insecure")


# -- ZAP: one handler per context, one allow-list per socket (domain) ---------------------------

class _Domain:
    """The ZAP credentials provider of one server socket: its allow-list and refusals."""

    def __init__(self, name: str, allowed: frozenset[bytes], what: str):
        self.name, self.allowed, self.what = name, allowed, what
        self.refused = 0
        self._logged: set[bytes] = set()

    def callback(self, domain: str, client_key: bytes) -> bool:  # noqa: ARG002 - pyzmq's signature
        if client_key in self.allowed:
            return True
        self.refused += 1
        if client_key not in self._logged and len(self._logged) < 64:
            self._logged.add(client_key)
            log.warning("%s: refused a client whose key %s is not on the allow-list", self.what,
                        client_key.decode("ascii"))
        return False


class _Zap:
    """The ZAP handler of one context (ZeroMQ allows one per context), shared by its server sockets."""

    _lock = threading.Lock()
    _by_context: "weakref.WeakKeyDictionary[zmq.Context, _Zap]" = weakref.WeakKeyDictionary()

    def __init__(self, ctx: zmq.Context):
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("fusion.zap"))
        self.auth.start()
        self.domains: dict[str, _Domain] = {}

    @classmethod
    def add(cls, ctx: zmq.Context, domain: _Domain) -> None:
        with cls._lock:
            zap = cls._by_context.get(ctx)
            if zap is None:
                zap = cls._by_context[ctx] = cls(ctx)
            if domain.name in zap.domains:
                raise ConfigError(f"{domain.what}: ZAP domain {domain.name!r} is already in use in this process")
            zap.domains[domain.name] = domain
            zap.auth.configure_curve_callback(domain.name, domain)

    @classmethod
    def remove(cls, ctx: zmq.Context, name: str) -> None:
        with cls._lock:
            zap = cls._by_context.get(ctx)
            if zap is None or zap.domains.pop(name, None) is None:
                return
            zap.auth.credentials_providers.pop(name, None)
            if not zap.domains and not ctx.closed:
                zap.auth.stop()
                del cls._by_context[ctx]


def serve_curve(sock: zmq.Socket, sec: ServerSecurity, domain: str, what: str) -> _Domain:
    """Make ``sock`` a CURVE server admitting only ``sec.allowed``; call before it binds."""
    entry = _Domain(domain, sec.allowed, what)
    _Zap.add(sock.context, entry)
    sock.zap_domain = domain.encode("utf-8")
    sock.curve_secretkey = sec.keys.secret
    sock.curve_publickey = sec.keys.public
    sock.curve_server = True
    return entry


def release_server(sock: zmq.Socket, entry: _Domain | None) -> None:
    """Drop a server socket's allow-list from its context's ZAP handler (after closing it)."""
    if entry is not None:
        _Zap.remove(sock.context, entry.name)


def client_keys(endpoint: str, server_key_file: str | None, secret_key_file: str | None, insecure: bool,
                what: str) -> tuple[KeyPair | None, bytes | None]:
    """A connecting side's ``(own key pair, server public key)`` from its options; both or neither."""
    if bool(server_key_file) != bool(secret_key_file):
        raise ConfigError(f"{what}: CURVE needs both --server-key (the server's public key) and --secret-key "
                          f"(this side's key pair)")
    require_secure(endpoint, bool(server_key_file), insecure, what, "give --server-key and --secret-key")
    if not server_key_file:
        return None, None
    return load_key_pair(secret_key_file, f"{what} --secret-key"), load_public_key(server_key_file,
                                                                                 f"{what} --server-key")


# Network hops only: a pulled cable leaves tcp retransmitting with a growing back-off (7.2 s to
# recover from a 20 s pull, measured); ZMTP heartbeats drop the dead connection (the peer too:
# TTL) and bounded connect attempts, retried, find the link within about a second of its return.
# Not on ipc or loopback: there a node stalled for 3 s under a flood would only lose its queue.
_KEEPALIVE = ((zmq.HEARTBEAT_IVL, 500), (zmq.HEARTBEAT_TIMEOUT, 3000), (zmq.HEARTBEAT_TTL, 3000),
              (zmq.CONNECT_TIMEOUT, 1000))


def connect_client(sock: zmq.Socket, endpoint: str, keys: KeyPair | None, server_key: bytes | None) -> None:
    """Connect ``sock``: as a CURVE client when a server key is given, plain otherwise; with ZMTP
    heartbeats when the endpoint can leave the host.

    Socket options are taken per connection at connect time, so one SUB can reach CURVE and
    plain publishers, near and far, alike.
    """
    far = not plain_allowed(endpoint)
    for option, value in _KEEPALIVE:
        sock.setsockopt(option, value if far else 0)
    if server_key is not None:
        assert keys is not None
        sock.curve_serverkey = server_key
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret
    else:
        sock.curve_server = False  # back to the NULL mechanism for this connection
    sock.connect(endpoint)


# -- handshake failures seen by a connecting socket -------------------------------------------

# Monitor events of a failed ZMTP handshake, and the name each is counted under.
# ``auth``: the server's ZAP refused our key; ``protocol``: a mechanism mismatch (a plain peer
# where CURVE is expected, or the reverse) or a malformed handshake; ``no_detail``: the peer
# dropped the connection mid-handshake, which is what a CURVE server whose key is not the one
# expected does (it cannot open our HELLO).
FAILURE_KINDS = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
                 zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail"}
HANDSHAKE_FAILURES = sum(FAILURE_KINDS)


# -- the node's hops ----------------------------------------------------------------------------

class NodeSecurity:
    """The node's keys and allow-lists from its config; checks every endpoint before any socket exists."""

    def __init__(self, node_cfg, sensors):
        self.insecure = bool(node_cfg.insecure)
        self.keys = load_key_pair(node_cfg.secret_key_file, "node.secret_key_file") \
            if node_cfg.secret_key_file else None
        self.server_keys: dict[str, bytes | None] = {}
        for s in sensors:
            what = f"sensor {s.id}"
            if s.public_key_file and self.keys is None:
                raise ConfigError(f"{what}: public_key_file needs node.secret_key_file, the node's own key pair "
                                  f"(make one with `fusion keys new node`)")
            require_secure(s.endpoint, bool(s.public_key_file), self.insecure, what,
                           "set its public_key_file (and node.secret_key_file)")
            self.server_keys[s.id] = load_public_key(s.public_key_file, f"{what} public_key_file") \
                if s.public_key_file else None
        self.publish: ServerSecurity | None = None
        if node_cfg.allow_subscribers:
            if self.keys is None:
                raise ConfigError("node.allow_subscribers needs node.secret_key_file, the key pair the "
                                  "subscribers expect")
            self.publish = ServerSecurity(self.keys, load_allow_list(node_cfg.allow_subscribers,
                                                                     "node.allow_subscribers"))
        require_secure(node_cfg.publish_endpoint, self.publish is not None, self.insecure, "node.publish_endpoint",
                       "set node.secret_key_file and node.allow_subscribers")
        self.handshake_failed: dict[str, Counter] = {}
        self._publish_domain: _Domain | None = None

    def connect(self, sub: zmq.Socket, endpoint: str, sensor_ids: list[str]) -> None:
        """Connect a SUB to one sensor endpoint, as a CURVE client when its sensor has a key."""
        key = next((self.server_keys[sid] for sid in sensor_ids if self.server_keys[sid] is not None), None)
        connect_client(sub, endpoint, self.keys, key)

    def count_failure(self, sensor_ids: list[str], event: int) -> None:
        """Count a failed handshake on an endpoint (a publisher refused) against its sensor."""
        kind = FAILURE_KINDS.get(event)
        if kind is not None:
            name = sensor_ids[0] if len(sensor_ids) == 1 else "unattributed"
            self.handshake_failed.setdefault(name, Counter())[kind] += 1

    def serve(self, pub: zmq.Socket) -> None:
        """Make the PUB a CURVE server for the allowed subscribers (before it binds)."""
        if self.publish is not None:
            self._publish_domain = serve_curve(pub, self.publish, f"fusion.node.{id(pub):x}", "node publish")

    def stats(self, sensor_ids: Iterable[str]) -> dict:
        """The ``security`` entry of a rig's stats."""
        ids = set(sensor_ids) | {"unattributed"}
        return {"handshake_failed": {k: dict(v) for k, v in self.handshake_failed.items() if k in ids},
                "subscribers_refused": self._publish_domain.refused if self._publish_domain else 0}

    def close(self, pub: zmq.Socket) -> None:
        release_server(pub, self._publish_domain)
