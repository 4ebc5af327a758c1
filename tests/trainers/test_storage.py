"""Folders to and from storage URIs, for real: file:// URIs go through pyarrow as s3:// would."""

from __future__ import annotations

from pathlib import Path

from trainers import storage


def folder(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def contents(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_a_folder_replaces_what_was_at_a_uri_and_comes_back(tmp_path):
    source = folder(tmp_path / "best", {"model.bin": "w", "onnx/model.onnx": "o"})
    shared = folder(tmp_path / "shared", {"stale.txt": "old"})
    uri = f"file://{shared}"
    assert storage.is_uri(uri) and not storage.is_uri(source)
    storage.replace_folder(source, uri)
    assert contents(shared) == {"model.bin": "w", "onnx/model.onnx": "o"}  # stale.txt gone
    assert storage.is_folder(uri) and not storage.is_folder(f"{uri}/model.bin")
    back = tmp_path / "back"
    storage.replace_folder(uri, back)
    assert contents(back) == contents(source)


def test_local_folders_and_single_files(tmp_path):
    source = folder(tmp_path / "a", {"x.txt": "1"})
    target = folder(tmp_path / "b", {"old.txt": "0"})
    storage.replace_folder(source, target)
    assert contents(target) == {"x.txt": "1"}
    storage.copy(source / "x.txt", f"file://{tmp_path}/report.md")
    assert (tmp_path / "report.md").read_text() == "1"
