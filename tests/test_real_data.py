"""Real-data loaders on fixture folders written in every real format, and every bad-input case."""
import importlib.util, shutil, sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oilwater_jax.core import OilwaterError
from oilwater_jax import real_data as rd
from oilwater_jax.real_data import (CELEBA_LAYOUTS, WATERBIRDS_FOLDER, load_celeba, load_waterbirds, prepare_images,
                                    read_celeba_index, read_waterbirds_index, split_group_counts,
                                    write_fixture_celeba, write_fixture_waterbirds)

COUNTS = [[3, 2, 1, 1], [1, 2, 1, 1], [1, 1, 2, 1]]   # per split (rows) and group (columns): 17 images


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    "Fixture folders written once per module; tests that damage them work on copies."
    base = tmp_path_factory.mktemp("pristine")
    write_fixture_waterbirds(base/"wb-original", "original", COUNTS, seed=1)
    write_fixture_waterbirds(base/"wb-wilds", "wilds", COUNTS, seed=1)
    for layout in CELEBA_LAYOUTS: write_fixture_celeba(base/f"celeba-{layout}", layout, COUNTS, seed=2)
    write_fixture_waterbirds(base/"wb-small", "original", 1, seed=3)
    write_fixture_celeba(base/"celeba-small-txt", "txt", 1, seed=4)
    write_fixture_celeba(base/"celeba-small-csv", "csv", 1, seed=4)
    return base


def copy(pristine, name, tmp_path) -> Path:
    return Path(shutil.copytree(pristine/name, tmp_path/name))


def edit_lines(path: Path, edit):
    "Apply `edit` to the list of lines of `path` and write it back (with a final newline)."
    lines = path.read_text().splitlines(); edit(lines); path.write_text("\n".join(lines) + "\n")


def set_field(lines, line_no, field, value):
    "Set one field of a CSV line (1-based line number)."
    fields = lines[line_no - 1].split(","); fields[field] = value; lines[line_no - 1] = ",".join(fields)


def set_txt_field(lines, line_no, field, value):
    "Set one field of a whitespace-separated line, keeping the runs of spaces of the original format."
    fields = lines[line_no - 1].split(); fields[field] = value; lines[line_no - 1] = "  ".join(fields)


def raises(fn, *fragments):
    with pytest.raises(OilwaterError) as info: fn()
    for fragment in fragments: assert fragment in str(info.value), str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------------------------------------- formats

@pytest.mark.parametrize("layout", ["original", "wilds"])
def test_waterbirds_layouts(pristine, tmp_path, layout):
    root = pristine/f"wb-{layout}"
    folder = root/(WATERBIRDS_FOLDER if layout == "original" else "waterbirds_v1.0")
    rows = [line.split(",") for line in (folder/"metadata.csv").read_text().splitlines()[1:]]
    ds = load_waterbirds(root, image_size=20, cache=tmp_path)
    assert read_waterbirds_index(root).layout == layout
    assert len(ds) == len(rows) == 17
    np.testing.assert_array_equal(split_group_counts(ds), COUNTS)
    np.testing.assert_array_equal(ds.sample_ids, [int(r[0]) for r in rows])
    np.testing.assert_array_equal(ds.labels, [int(r[2]) for r in rows])
    np.testing.assert_array_equal(ds.splits, [int(r[3]) for r in rows])
    np.testing.assert_array_equal(ds.attributes, [int(r[4]) for r in rows])
    assert ds.images.dtype == np.uint8 and ds.image_shape == (20, 20, 3)
    assert ds.group_names == ("landbird on land", "landbird on water", "waterbird on land", "waterbird on water")
    assert ds.class_names == ("landbird", "waterbird") and ds.name == "waterbirds"
    for i in (0, 9, 16):   # the cache holds exactly the transformed pixels, in metadata order
        np.testing.assert_array_equal(ds.images[i], rd.waterbirds_transform(Image.open(folder/rows[i][1]), 20))


def test_waterbirds_data_folder_itself(pristine):
    index = read_waterbirds_index(pristine/"wb-original"/WATERBIRDS_FOLDER, layout="original")
    assert len(index) == 17 and index.layout == "original"


@pytest.mark.parametrize("layout", list(CELEBA_LAYOUTS))
def test_celeba_layouts(pristine, tmp_path, layout):
    root = pristine/f"celeba-{layout}"
    ds = load_celeba(root, image_size=16, cache=tmp_path)
    index = read_celeba_index(root)
    assert index.layout == layout
    assert len(ds) == 17
    np.testing.assert_array_equal(split_group_counts(ds), COUNTS)
    np.testing.assert_array_equal(ds.sample_ids, np.arange(1, 18))
    assert ds.image_shape == (16, 16, 3)
    assert ds.group_names == ("non-blond female", "non-blond male", "blond female", "blond male")
    assert ds.class_names == ("not blond", "blond") and ds.name == "celeba"
    # labels and attributes straight from the files: Blond_Hair and Male, -1 -> 0
    folder = index.folder
    if layout == "txt":
        rows = [l.split() for l in (folder/"list_attr_celeba.txt").read_text().splitlines()[2:]]
        splits = [int(l.split()[1]) for l in (folder/"list_eval_partition.txt").read_text().splitlines()]
    else:
        rows = [l.split(",") for l in (folder/"list_attr_celeba.csv").read_text().splitlines()[1:]]
        splits = [int(l.split(",")[1]) for l in (folder/"list_eval_partition.csv").read_text().splitlines()[1:]]
    np.testing.assert_array_equal(ds.labels, [(int(r[10]) + 1) // 2 for r in rows])
    np.testing.assert_array_equal(ds.attributes, [(int(r[21]) + 1) // 2 for r in rows])
    np.testing.assert_array_equal(ds.splits, splits)
    np.testing.assert_array_equal(ds.images[5], rd.celeba_transform(Image.open(index.image_paths[5]), 16))


def test_celeba_all_layouts_agree(pristine):
    indexes = [read_celeba_index(pristine/f"celeba-{layout}") for layout in CELEBA_LAYOUTS]
    for other in indexes[1:]:
        for field in ("labels", "attributes", "splits", "sample_ids"):
            np.testing.assert_array_equal(getattr(other, field), getattr(indexes[0], field))


def test_celeba_kaggle_files_with_flat_image_folder(pristine, tmp_path):
    root = copy(pristine, "celeba-csv", tmp_path)
    (root/"img_align_celeba"/"img_align_celeba").rename(root/"flat")
    shutil.rmtree(root/"img_align_celeba"); (root/"flat").rename(root/"img_align_celeba")
    index = read_celeba_index(root, layout="csv")
    assert len(index) == 17 and Path(index.image_paths[0]) == (root/"img_align_celeba"/"000001.jpg").resolve()


def test_no_final_newline_keeps_last_row(tmp_path):
    # tensorflow-datasets' celeb_a parser drops this row; we must not
    wb = write_fixture_waterbirds(tmp_path/"wb", n_per_group_split=1, final_newline=False)
    assert not (wb/"metadata.csv").read_bytes().endswith(b"\n")
    assert len(read_waterbirds_index(tmp_path/"wb")) == 12
    for layout in ("txt", "csv"):
        folder = write_fixture_celeba(tmp_path/layout, layout, 1, final_newline=False)
        index = read_celeba_index(folder)
        assert len(index) == 12 and index.sample_ids[-1] == 12


def test_subsample_is_stratified_and_deterministic(pristine, tmp_path):
    root = tmp_path/"big"
    write_fixture_celeba(root, "csv", [[20, 10, 10, 3], [10, 10, 6, 2], [6, 6, 4, 1]], seed=5)
    index = read_celeba_index(root)
    keep = rd.stratified_subsample(index.splits, index.group_ids, 0.1, seed=0)
    np.testing.assert_array_equal(split_group_counts(index.subset(keep)), [[2, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(keep, rd.stratified_subsample(index.splits, index.group_ids, 0.1, seed=0))
    assert any(not np.array_equal(keep, rd.stratified_subsample(index.splits, index.group_ids, 0.1, seed=s))
               for s in (1, 2, 3))
    ds = load_celeba(root, image_size=8, subsample=0.1, seed=0, cache=tmp_path/"cache")
    np.testing.assert_array_equal(ds.sample_ids, index.sample_ids[keep])
    half = load_celeba(root, image_size=8, subsample=0.5, seed=0, cache=tmp_path/"cache")
    np.testing.assert_array_equal(split_group_counts(half), [[10, 5, 5, 2], [5, 5, 3, 1], [3, 3, 2, 1]])
    for bad in (0, 0.0, 1.5, -0.1, "0.1", True):
        raises(lambda: load_celeba(root, image_size=8, subsample=bad, cache=tmp_path/"cache"), "subsample must be a fraction")


def test_prepared_once_and_rekeyed(pristine, tmp_path, monkeypatch):
    root = copy(pristine, "wb-small", tmp_path)
    cache = tmp_path/"cache"
    first = load_waterbirds(root, image_size=12, cache=cache)
    prepared = list(cache.iterdir())
    assert len(prepared) == 1 and prepared[0].name.startswith("waterbirds-original-12px-")

    def no_decoding(img, size): raise AssertionError("decoded again")
    monkeypatch.setitem(rd.TRANSFORMS, "waterbirds", no_decoding)
    again = load_waterbirds(root, image_size=12, cache=cache)   # served from the cache: no transform call
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.sample_ids, first.sample_ids)
    with pytest.raises(AssertionError, match="decoded again"): load_waterbirds(root, image_size=10, cache=cache)
    monkeypatch.undo()
    # replacing an image changes the key, and the new pixels are picked up
    index = read_waterbirds_index(root)
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(index.image_paths[3], format="JPEG")
    changed = load_waterbirds(root, image_size=12, cache=cache)
    assert changed.images[3].max() <= 2 and first.images[3].max() > 2
    assert len(list(cache.iterdir())) == 3   # 12px, the failed 10px attempt's empty folder, 12px after the change


def test_array_record_data_source_without_tensorflow(pristine, tmp_path):
    index = read_celeba_index(pristine/"celeba-small-txt")
    builder = prepare_images(index, 8, cache=tmp_path)
    assert list(Path(builder.data_dir).glob("*.array_record-*"))
    sources = builder.as_data_source()
    assert sorted(sources) == ["test", "train", "val"]
    assert [len(sources[s]) for s in ("train", "val", "test")] == [4, 4, 4]
    example = sources["val"][0]
    assert example["image"].shape == (8, 8, 3) and example["image"].dtype == np.uint8
    assert int(example["sample_id"]) == index.sample_ids[index.splits == 1][0]
    if importlib.util.find_spec("tensorflow") is None: assert "tensorflow" not in sys.modules


# ------------------------------------------------------------------------------------------ finding the files

def test_missing_root_and_no_layout(tmp_path):
    raises(lambda: load_waterbirds(tmp_path/"nope", cache=tmp_path), "nope does not exist")
    (tmp_path/"empty").mkdir()
    message = raises(lambda: load_celeba(tmp_path/"empty", cache=tmp_path), "No CelebA files found under",
                     "list_attr_celeba.txt", "celebA/data/", "celebA_v1.0/ is missing RELEASE_v1.0.txt")
    assert all(f"  {layout}:" in message for layout in CELEBA_LAYOUTS)
    raises(lambda: read_waterbirds_index(tmp_path/"empty"), "No Waterbirds files found", f"{WATERBIRDS_FOLDER}/ is missing metadata.csv")


def test_unknown_layout_name(pristine):
    raises(lambda: read_celeba_index(pristine/"celeba-txt", layout="kaggle"), "Unknown CelebA layout 'kaggle'")
    raises(lambda: read_waterbirds_index(pristine/"wb-wilds", layout="wild"), "Did you mean 'wilds'")


def test_wilds_needs_release_file(pristine, tmp_path):
    wb = copy(pristine, "wb-wilds", tmp_path)
    (wb/"waterbirds_v1.0"/"RELEASE_v1.0.txt").unlink()
    raises(lambda: read_waterbirds_index(wb, layout="wilds"), "waterbirds_v1.0/ is missing RELEASE_v1.0.txt")
    raises(lambda: read_waterbirds_index(wb), "No Waterbirds files found")
    cb = copy(pristine, "celeba-wilds", tmp_path)
    (cb/"celebA_v1.0"/"RELEASE_v1.0.txt").unlink()
    raises(lambda: read_celeba_index(cb, layout="wilds"), "celebA_v1.0/ is missing RELEASE_v1.0.txt")


def test_missing_metadata_files(pristine, tmp_path):
    cb = copy(pristine, "celeba-small-txt", tmp_path)
    (cb/"list_eval_partition.txt").unlink()
    raises(lambda: read_celeba_index(cb, layout="txt"), "is missing list_eval_partition.txt")
    cb = copy(pristine, "celeba-small-csv", tmp_path)
    shutil.rmtree(cb/"img_align_celeba")
    raises(lambda: read_celeba_index(cb), "CelebA images not found", "img_align_celeba/img_align_celeba")


# ---------------------------------------------------------------------------------------- Waterbirds bad input

WB_CASES = {   # name: (edit of metadata.csv lines, expected fragments)
    "unknown split": (lambda l: set_field(l, 4, 3, "3"), ["metadata.csv line 4: split must be one of 0, 1, 2", "got '3'"]),
    "y outside": (lambda l: set_field(l, 5, 2, "2"), ["metadata.csv line 5: y must be one of 0, 1"]),
    "place outside": (lambda l: set_field(l, 6, 4, "-1"), ["metadata.csv line 6: place must be one of 0, 1"]),
    "y not a number": (lambda l: set_field(l, 3, 2, "yes"), ["metadata.csv line 3: y must be an integer"]),
    "img_id not a number": (lambda l: set_field(l, 7, 0, "7a"), ["metadata.csv line 7: img_id must be an integer"]),
    "missing column": (lambda l: l.__setitem__(0, l[0].replace(",place,", ",background,")),
                       ["metadata.csv line 1: missing column(s) place"]),
    "short line": (lambda l: l.__setitem__(8, l[8].rsplit(",", 1)[0]), ["metadata.csv line 9: expected 6 fields, got 5"]),
    "duplicate id": (lambda l: set_field(l, 10, 0, l[1].split(",")[0]), ["metadata.csv lines 2, 10:", "appears more than once"]),
    "missing image": (lambda l: set_field(l, 11, 1, "014.Indigo_Bunting/nope.jpg"), ["metadata.csv line 11: image", "nope.jpg not found"]),
    "missing species folder": (lambda l: set_field(l, 12, 1, "999.Nope/nope.jpg"), ["metadata.csv line 12: image"]),
    "empty filename": (lambda l: set_field(l, 13, 1, ""), ["metadata.csv line 13: img_filename is empty"]),
    "header only": (lambda l: l.__delitem__(slice(1, None)), ["metadata.csv has a header but no rows"]),
}


@pytest.mark.parametrize("case", list(WB_CASES))
def test_waterbirds_bad_metadata(pristine, tmp_path, case):
    edit, fragments = WB_CASES[case]
    root = copy(pristine, "wb-small", tmp_path)
    edit_lines(root/WATERBIRDS_FOLDER/"metadata.csv", edit)
    raises(lambda: load_waterbirds(root, image_size=8, cache=tmp_path/"cache"), *fragments)


def test_waterbirds_empty_metadata(pristine, tmp_path):
    root = copy(pristine, "wb-small", tmp_path)
    (root/WATERBIRDS_FOLDER/"metadata.csv").write_text("")
    raises(lambda: read_waterbirds_index(root), "metadata.csv is empty")


@pytest.mark.parametrize("damage", ["not a jpeg", "truncated"])
def test_waterbirds_corrupt_image(pristine, tmp_path, damage):
    root = copy(pristine, "wb-small", tmp_path)
    index = read_waterbirds_index(root)
    target = Path(index.image_paths[5])
    data = target.read_bytes()
    target.write_bytes(b"GIF89a nothing" if damage == "not a jpeg" else data[:len(data) // 3])
    message = raises(lambda: load_waterbirds(root, image_size=8, cache=tmp_path/"cache"),
                     f"metadata.csv line {index.lines[5]}: cannot read image", target.name)
    if damage == "truncated": assert "truncated" in message
    assert not list((tmp_path/"cache").rglob("*.array_record*"))   # nothing half-written is kept


# ------------------------------------------------------------------------------------------- CelebA bad input

def drop_last_value(l): l[6] = l[6].rsplit(" ", 1)[0]
def extra_value(l): l[3] = l[3] + "  1"
def remove_name(l): l[1] = l[1].replace("Blond_Hair ", "")

CELEBA_TXT_CASES = {   # name: (file, edit, expected fragments)
    "short attribute line": ("list_attr_celeba.txt", drop_last_value,
                             ["list_attr_celeba.txt line 7: expected a file name and 40 attribute values, got 39"]),
    "long attribute line": ("list_attr_celeba.txt", extra_value, ["list_attr_celeba.txt line 4:", "got 41 values"]),
    "count mismatch": ("list_attr_celeba.txt", lambda l: l.__setitem__(0, "11"),
                       ["list_attr_celeba.txt line 1: says 11 images but the file has 12 rows"]),
    "count not a number": ("list_attr_celeba.txt", lambda l: l.__setitem__(0, "many"),
                           ["list_attr_celeba.txt line 1: the image count must be an integer"]),
    "missing attribute": ("list_attr_celeba.txt", remove_name, ["list_attr_celeba.txt line 2: attribute(s) Blond_Hair missing"]),
    "misspelt attribute": ("list_attr_celeba.txt", lambda l: l.__setitem__(1, l[1].replace("Male", "Mael")),
                           ["list_attr_celeba.txt line 2: attribute(s) Male missing"]),
    "male value": ("list_attr_celeba.txt", lambda l: set_txt_field(l, 5, 21, "0"),
                   ["list_attr_celeba.txt line 5: Male must be one of -1, 1, got '0'"]),
    "blond value": ("list_attr_celeba.txt", lambda l: set_txt_field(l, 8, 10, "2"),
                    ["list_attr_celeba.txt line 8: Blond_Hair must be one of -1, 1"]),
    "attribute file names another image": ("list_attr_celeba.txt", lambda l: set_txt_field(l, 9, 0, "face.jpg"),
                          ["list_attr_celeba.txt line 9: face.jpg has no line in list_eval_partition.txt"]),
    "unknown split": ("list_eval_partition.txt", lambda l: l.__setitem__(2, l[2][:-1] + "5"),
                      ["list_eval_partition.txt line 3: the split must be one of 0, 1, 2", "got '5'"]),
    "partition lacks an image": ("list_eval_partition.txt", lambda l: l.__delitem__(4),
                                 ["list_attr_celeba.txt line 7: 000005.jpg has no line in list_eval_partition.txt"]),
    "partition has an extra image": ("list_eval_partition.txt", lambda l: l.append("000099.jpg 0"),
                                     ["list_eval_partition.txt line 13: 000099.jpg is not in list_attr_celeba.txt"]),
    "partition duplicate": ("list_eval_partition.txt", lambda l: l.append(l[0]),
                            ["list_eval_partition.txt line 13: 000001.jpg is listed twice"]),
    "partition line with three fields": ("list_eval_partition.txt", lambda l: l.__setitem__(1, l[1] + " 1"),
                                         ["list_eval_partition.txt line 2: expected 'file_name split'"]),
}


@pytest.mark.parametrize("case", list(CELEBA_TXT_CASES))
def test_celeba_txt_bad_input(pristine, tmp_path, case):
    file, edit, fragments = CELEBA_TXT_CASES[case]
    root = copy(pristine, "celeba-small-txt", tmp_path)
    edit_lines(root/file, edit)
    raises(lambda: load_celeba(root, image_size=8, cache=tmp_path/"cache"), *fragments)


def test_celeba_image_name_not_a_number(pristine, tmp_path):
    root = copy(pristine, "celeba-small-txt", tmp_path)
    for file in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        (root/file).write_text((root/file).read_text().replace("000003.jpg", "face03.jpg"))
    (root/"img_align_celeba"/"000003.jpg").rename(root/"img_align_celeba"/"face03.jpg")
    raises(lambda: read_celeba_index(root), "list_attr_celeba.txt line 5: image name 'face03.jpg' is not a number")


CELEBA_CSV_CASES = {
    "missing Male column": ("list_attr_celeba.csv", lambda l: l.__setitem__(0, l[0].replace(",Male,", ",Man,")),
                            ["list_attr_celeba.csv line 1: missing column(s) Male"]),
    "missing partition column": ("list_eval_partition.csv", lambda l: l.__setitem__(0, "image_id,split"),
                                 ["list_eval_partition.csv line 1: missing column(s) partition"]),
    "short row": ("list_attr_celeba.csv", lambda l: l.__setitem__(6, l[6].rsplit(",", 1)[0]),
                  ["list_attr_celeba.csv line 7: expected 41 fields, got 40"]),
    "male value": ("list_attr_celeba.csv", lambda l: set_field(l, 4, 21, "0"),
                   ["list_attr_celeba.csv line 4: Male must be one of -1, 1, got '0'"]),
    "unknown split": ("list_eval_partition.csv", lambda l: set_field(l, 5, 1, "train"),
                      ["list_eval_partition.csv line 5: the split must be an integer"]),
    "mismatched files": ("list_eval_partition.csv", lambda l: set_field(l, 9, 0, "000077.jpg"),
                         ["list_attr_celeba.csv line 9: 000008.jpg has no line in list_eval_partition.csv"]),
}


@pytest.mark.parametrize("case", list(CELEBA_CSV_CASES))
def test_celeba_csv_bad_input(pristine, tmp_path, case):
    file, edit, fragments = CELEBA_CSV_CASES[case]
    root = copy(pristine, "celeba-small-csv", tmp_path)
    edit_lines(root/file, edit)
    raises(lambda: load_celeba(root, image_size=8, cache=tmp_path/"cache"), *fragments)


def test_celeba_missing_and_corrupt_images(pristine, tmp_path):
    root = copy(pristine, "celeba-small-txt", tmp_path)
    (root/"img_align_celeba"/"000006.jpg").unlink()
    raises(lambda: read_celeba_index(root), "list_attr_celeba.txt line 8: image", "000006.jpg not found")
    root = copy(pristine, "celeba-small-csv", tmp_path/"b")
    (root/"img_align_celeba"/"img_align_celeba"/"000010.jpg").write_bytes(b"\xff\xd8\xff garbage")
    raises(lambda: load_celeba(root, image_size=8, cache=tmp_path/"cache"),
           "list_attr_celeba.csv line 11: cannot read image", "000010.jpg")


def test_bad_image_size(pristine, tmp_path):
    for bad in (0, -3, 2.5, "64", True):
        raises(lambda: load_celeba(pristine/"celeba-small-txt", image_size=bad, cache=tmp_path), "image_size must be a positive integer")
