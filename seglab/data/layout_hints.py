"""The fix for a dataset tree that `seglab data check` could not read as given: another
registered format (a VOC tree checked as folder -> --format voc), masks in another folder or
with another suffix (-> --mask-dir / --mask-suffix), images in another folder (-> --image-dir).
RGB masks without class colours are named by the reader itself (data/colour_masks.py).
"""

from __future__ import annotations

from pathlib import Path

from seglab.data.folder_layout import IMAGE_SUFFIXES, FolderLayout

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


def other_format(root: Path, format: str) -> str | None:
    """A registered format other than `format` whose release tree `root` holds."""
    from seglab.data.registry import DATASETS

    for name, info in sorted(DATASETS.items()):
        finder = getattr(info.cls, "available_splits", None)
        if name == format or finder is None:
            continue
        try:
            if finder(root):
                return name
        except Exception:  # a finder of another layout may fail in any way on this tree
            continue
    return None


def _mask_suffix(folder: Path, name: str, image: Path) -> str | None:
    """The suffix of `name`'s mask among `folder`'s files (".png", "_mask.png", ...)."""
    for path in sorted(folder.glob(f"{name}*")):
        suffix = path.name[len(name) :]
        if path != image and path.is_file() and suffix.lower().endswith(MASK_EXTENSIONS):
            return suffix
    return None


def _image_dir(root: Path, layout: FolderLayout) -> Path | None:
    """layout's image folder, else the one sub-folder (or root itself) holding images."""
    if (root / layout.image_dir).is_dir():
        return root / layout.image_dir
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.glob("*")):
            return folder
    return None


def folder_hint(root: Path, layout: FolderLayout) -> str | None:
    """Options that describe a folder tree whose images or masks are not where `layout` says."""
    images = _image_dir(root, layout)
    if images is None:
        return None
    options = []
    if images != root / layout.image_dir:
        options.append(("image-dir", images.relative_to(root).as_posix() or "."))
    found = FolderLayout(image_dir=options[0][1] if options else layout.image_dir).all_names(root)
    if not found:
        return None
    name = found[0]
    image = FolderLayout(image_dir=images.relative_to(root).as_posix() or ".").image_path(
        root, name
    )
    if not layout.mask_path(root, name).is_file():
        candidates = [root / layout.mask_dir] if (root / layout.mask_dir).is_dir() else []
        candidates += [p for p in sorted(root.iterdir()) if p.is_dir() and p not in candidates]
        for folder in candidates:
            suffix = _mask_suffix(folder, name, image)
            if suffix is None:
                continue
            if folder != root / layout.mask_dir:
                options.append(("mask-dir", folder.relative_to(root).as_posix()))
            if suffix != layout.mask_suffix:
                options.append(("mask-suffix", suffix))
            break
    if not options:
        return None
    flags = " ".join(f"--{key} {value}" for key, value in options)
    keys = ", ".join(f"data.{key.replace('-', '_')}: {value}" for key, value in options)
    return f"its files look like {flags} (in a config: {keys})"


def layout_hint(root: str | Path, format: str, layout: FolderLayout | None = None) -> str | None:
    """One clause naming the fix for `root` checked as `format`, or None if none is seen."""
    root = Path(root)
    if not root.is_dir():
        return None
    layout = layout or FolderLayout()
    # a folder tree (classes.txt) is described first: release finders are loose (CamVid's
    # is any train/ folder)
    if format == "folder" and (root / "classes.txt").is_file():
        return folder_hint(root, layout)
    found = other_format(root, format)
    if found is not None:
        return f"{root} looks like a {found} tree: use --format {found} (data.format: {found})"
    return folder_hint(root, layout) if format == "folder" else None
