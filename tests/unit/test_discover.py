"""discover: the kubelet layout, the /var/log/containers links, sidecar files, and hostile trees."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipper.discover import discover, discover_flat, parse_layout_path, parse_pod_dir
from shipper.model import ContainerRef

UID = "0f6ad4b2-5c39-4c4e-9d4e-8d5a1b7f3e21"
CID = "a" * 64


def make_log(pods: Path, ns: str, pod: str, uid: str, container: str, name: str, data: bytes = b"x\n") -> Path:
    path = pods / f"{ns}_{pod}_{uid}" / container / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    pods, links = tmp_path / "pods", tmp_path / "containers"
    pods.mkdir()
    links.mkdir()
    return pods, links


def test_layout_path_gives_the_container_ref(tree):
    pods, links = tree
    path = make_log(pods, "payments", "api-7d9f-x2x", UID, "app", "3.log")
    result = discover([str(pods)], [str(links)])
    assert [f.path for f in result.files] == [str(path)]
    assert result.files[0].ref == ContainerRef("payments", "api-7d9f-x2x", UID, "app", 3)
    assert result.rejected == []


def test_rotated_and_compressed_copies_are_not_sources(tree):
    pods, links = tree
    live = make_log(pods, "ns", "pod", UID, "app", "0.log")
    for name in ("0.log.20261128-180000", "0.log.20261128-170000.gz", "0.log.20261128-160000.gz.tmp"):
        make_log(pods, "ns", "pod", UID, "app", name)
    result = discover([str(pods)], [])
    assert [f.path for f in result.files] == [str(live)]
    assert result.rejected == []


def test_lower_restart_counts_come_first(tree):
    pods, _ = tree
    for n in (10, 2, 0, 1):
        make_log(pods, "ns", "pod", UID, "app", f"{n}.log")
    make_log(pods, "ns", "pod", UID, "sidecar", "0.log")
    result = discover([str(pods)], [])
    assert [(f.ref.container, f.ref.restart_count) for f in result.files] == [
        ("app", 0), ("app", 1), ("app", 2), ("app", 10), ("sidecar", 0)]


def test_paths_off_the_layout_are_rejected_with_a_reason(tree):
    pods, _ = tree
    make_log(pods, "ns", "pod", UID, "app", "notes.txt")
    make_log(pods, "ns", "pod", UID, "app", "app.log")
    (pods / "no-underscores" / "app").mkdir(parents=True)
    (pods / "stray-file.log").write_bytes(b"")
    result = discover([str(pods)], [])
    assert result.files == []
    reasons = {os.path.basename(r.path): r.reason for r in result.rejected}
    assert "notes.txt" in reasons and "app.log" in reasons and "no-underscores" in reasons
    assert all(r.reason for r in result.rejected)


def test_container_links_resolve_into_the_pods_tree_without_duplicates(tree):
    pods, links = tree
    path = make_log(pods, "ns", "web-1", UID, "app", "0.log")
    (links / f"web-1_ns_app-{CID}.log").symlink_to(path)
    result = discover([str(pods)], [str(links)])
    assert len(result.files) == 1
    assert result.files[0].path == str(path)
    assert result.files[0].container_id == CID


def test_links_alone_find_the_file_through_the_pods_hop(tree, tmp_path):
    pods, links = tree
    path = make_log(pods, "ns", "web-1", UID, "app", "2.log")
    (links / f"web-1_ns_app-{CID}.log").symlink_to(os.path.relpath(path, links))
    result = discover([str(pods)], [str(links)])
    only_links = discover([], [str(links)])          # no root: nothing is allowed
    assert result.files[0].ref.restart_count == 2
    assert only_links.files == [] and "outside the allowed roots" in only_links.rejected[0].reason


def test_escaping_symlink_is_rejected_and_never_followed(tree, tmp_path):
    pods, links = tree
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$...\n")
    (links / f"evil_ns_app-{CID}.log").symlink_to("/etc/shadow")
    (links / f"evil2_ns_app-{CID}.log").symlink_to(secret)
    pod_dir = pods / f"ns_evil_{UID}" / "app"
    pod_dir.mkdir(parents=True)
    (pod_dir / "0.log").symlink_to(secret)
    result = discover([str(pods)], [str(links)])
    assert result.files == []
    assert len(result.rejected) == 3
    assert all("outside the allowed roots" in r.reason for r in result.rejected)


def test_symlinked_pod_directory_escaping_the_root_is_rejected(tree, tmp_path):
    pods, _ = tree
    outside = tmp_path / "elsewhere" / "app"
    outside.mkdir(parents=True)
    (outside / "0.log").write_bytes(b"x\n")
    (pods / f"ns_pod_{UID}").symlink_to(outside.parent)
    result = discover([str(pods)], [])
    assert result.files == [] and "outside the allowed roots" in result.rejected[0].reason


def test_dangling_and_looping_links_are_rejected(tree):
    pods, links = tree
    (links / f"gone_ns_app-{CID}.log").symlink_to(pods / "nowhere.log")
    (links / f"loop_ns_app-{CID}.log").symlink_to(links / f"loop_ns_app-{CID}.log")
    result = discover([str(pods)], [str(links)])
    assert result.files == [] and len(result.rejected) == 2


def test_docker_style_layout_link_is_followed_to_its_target_inside_roots(tree, tmp_path):
    pods, _ = tree
    docker = tmp_path / "docker" / CID
    docker.mkdir(parents=True)
    target = docker / f"{CID}-json.log"
    target.write_bytes(b'{"log":"x\\n"}\n')
    pod_dir = pods / f"ns_pod_{UID}" / "app"
    pod_dir.mkdir(parents=True)
    (pod_dir / "0.log").symlink_to(target)
    allowed = discover([str(pods), str(tmp_path / "docker")], [])
    refused = discover([str(pods)], [])
    assert [f.path for f in allowed.files] == [str(target)]
    assert allowed.files[0].ref.pod == "pod"
    assert refused.files == [] and refused.rejected


def test_include_and_exclude_globs_exclude_wins(tree):
    pods, links = tree
    keep = make_log(pods, "payments", "api", UID, "app", "0.log")
    make_log(pods, "kube-system", "dns", UID, "coredns", "0.log")
    noisy = make_log(pods, "payments", "api", UID, "istio-proxy", "0.log")
    (links / f"dns_kube-system_coredns-{CID}.log").symlink_to(pods / f"kube-system_dns_{UID}" / "coredns" / "0.log")
    result = discover([str(pods)], [str(links)], include=["*/payments_*"], exclude=["*/istio-proxy/*"])
    assert [f.path for f in result.files] == [str(keep)]
    assert str(noisy) in result.excluded


def test_odd_characters_in_names_are_kept_verbatim(tree):
    pods, _ = tree
    odd_container = "app with spaces;$(rm -rf)'\"ü"
    path = make_log(pods, "ns-ü", "pod.with.dots-ß", UID, odd_container, "0.log")
    result = discover([str(pods)], [])
    assert result.files[0].path == str(path)
    assert result.files[0].ref.container == odd_container
    assert result.files[0].ref.pod == "pod.with.dots-ß"


def test_undecodable_bytes_in_names_do_not_crash(tree):
    pods, _ = tree
    raw = os.fsencode(str(pods)) + b"/ns_p\xff\xfe_" + UID.encode() + b"/c\x80/0.log"
    os.makedirs(os.path.dirname(raw))
    with open(raw, "wb") as f:
        f.write(b"x\n")
    result = discover([str(pods)], [])
    assert len(result.files) == 1 and result.files[0].ref.restart_count == 0


def test_unicode_digits_are_not_restart_counts(tree):
    pods, _ = tree
    make_log(pods, "ns", "pod", UID, "app", "\u0661.log")      # ARABIC-INDIC DIGIT ONE
    result = discover([str(pods)], [])
    assert result.files == [] and result.rejected


def test_missing_root_is_empty_not_an_error(tmp_path):
    result = discover([str(tmp_path / "absent")], [str(tmp_path / "absent-too")])
    assert result.files == [] and result.rejected == []


def test_unreadable_directory_is_rejected(tree):
    if os.geteuid() == 0:
        pytest.skip("root reads every directory")
    pods, _ = tree
    make_log(pods, "ns", "pod", UID, "app", "0.log")
    locked = pods / f"ns_pod_{UID}"
    locked.chmod(0)
    try:
        result = discover([str(pods)], [])
    finally:
        locked.chmod(0o755)
    assert result.files == [] and "cannot list" in result.rejected[0].reason


@pytest.mark.parametrize("name,expected", [
    ("ns_pod_uid", ("ns", "pod", "uid")),
    ("ns_pod_with_underscores_uid", ("ns", "pod_with_underscores", "uid")),
    ("ns_uid", None), ("_pod_uid", None), ("ns_pod_", None), ("plain", None),
])
def test_pod_directory_names(name, expected):
    assert parse_pod_dir(name) == expected


def test_layout_path_outside_root_is_a_reason_not_a_crash(tmp_path):
    assert isinstance(parse_layout_path("/elsewhere/x/y/0.log", str(tmp_path)), str)


def test_sidecar_flat_directory(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("audit.log", "app.log", "app.log.1", "notes.txt", ".log"):
        (shared / name).write_bytes(b"x\n")
    (shared / "alias.log").symlink_to(shared / "app.log")
    (shared / "escape.log").symlink_to("/etc/passwd")
    template = ContainerRef("payments", "api-0", UID, "", 1)
    result = discover_flat(str(shared), template, include=[], exclude=["*/audit.log"])
    assert [(os.path.basename(f.path), f.ref.container) for f in result.files] == [("app.log", "app")]
    assert result.files[0].ref == ContainerRef("payments", "api-0", UID, "app", 1)
    assert [os.path.basename(r.path) for r in result.rejected] == ["escape.log"]
    assert result.excluded == [str(shared / "audit.log")]
