//! Tests on fixtures written here (in a tempdir) plus `#[ignore]`d checks against ../shared.

use super::preprocess::u8_batch;
use super::*;
use crate::caffe::datum::encode_datum;
use crate::ir::{DataLayerSource, Preprocess, Tensor};
use std::path::Path;

/// Deterministic CHW test image `k`.
fn img(k: usize, c: usize, h: usize, w: usize) -> Vec<u8> {
    (0..c * h * w)
        .map(|i| ((i * 7 + k * 31) % 251) as u8)
        .collect()
}

fn chw_to_hwc(chw: &[u8], c: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0; chw.len()];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                out[(y * w + x) * c + ch] = chw[(ch * h + y) * w + x];
            }
        }
    }
    out
}

fn reversed(chw: &[u8], c: usize) -> Vec<u8> {
    let plane = chw.len() / c;
    (0..c)
        .rev()
        .flat_map(|ch| chw[ch * plane..(ch + 1) * plane].to_vec())
        .collect()
}

fn write_lmdb(dir: &Path, records: &[(Vec<u8>, Vec<u8>)]) {
    super::lmdb::write_records(dir, records).unwrap();
}

fn key(i: usize) -> Vec<u8> {
    format!("{i:05}").into_bytes()
}

fn write_npy_u8(path: &Path, shape: &[u64], data: &[u8]) {
    use npyz::WriterBuilder;
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(f)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
    use npyz::WriterBuilder;
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(f)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn read_all(src: &mut dyn Source) -> Vec<Sample> {
    batches(src, 3)
        .collect::<Result<Vec<_>>>()
        .unwrap()
        .concat()
}

fn u8s(s: &Sample) -> &[u8] {
    s.image.as_u8().unwrap()
}

// ---------------------------------------------------------------- LMDB

#[test]
fn lmdb_roundtrip_without_lock_file() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let recs: Vec<_> = (0..7)
        .map(|i| {
            (
                key(i),
                encode_datum(3, 4, 5, &img(i, 3, 4, 5), i as i64 % 3),
            )
        })
        .collect();
    write_lmdb(&dir, &recs);
    let mut src = open(&DataSpec::new(&dir)).unwrap();
    assert_eq!(src.len(), 7);
    assert!(src.describe().contains("LMDB"));
    let all = read_all(&mut src);
    for (i, s) in all.iter().enumerate() {
        assert_eq!(s.image.shape(), [3, 4, 5]);
        assert_eq!(
            u8s(s),
            img(i, 3, 4, 5).as_slice(),
            "raw Datum bytes are delivered as stored"
        );
        assert_eq!(s.label, Some(i as i64 % 3));
    }
    assert_eq!(src.read(4).unwrap(), all[4]);
    assert!(src.read(7).is_err());
    assert!(
        !dir.join("lock.mdb").exists(),
        "the reader must not create a lock file"
    );
    // The data file itself (NO_SUB_DIR).
    let f = open(&DataSpec::new(dir.join("data.mdb"))).unwrap();
    assert_eq!(f.len(), 7);
}

#[test]
fn lmdb_keys_are_read_in_order() {
    let t = tempfile::tempdir().unwrap();
    let recs: Vec<_> = [3usize, 0, 2, 1]
        .iter()
        .map(|&i| (key(i), encode_datum(1, 2, 2, &[i as u8; 4], i as i64)))
        .collect();
    write_lmdb(t.path(), &recs);
    let mut src = open(&DataSpec::new(t.path())).unwrap();
    let labels: Vec<_> = read_all(&mut src)
        .iter()
        .map(|s| s.label.unwrap())
        .collect();
    assert_eq!(labels, vec![0, 1, 2, 3]);
}

fn encoded_datum(png: Vec<u8>, label: i64) -> Vec<u8> {
    use prost::Message;
    crate::caffe::proto::Datum {
        channels: Some(3),
        height: Some(2),
        width: Some(3),
        data: Some(png),
        label: Some(label),
        float_data: vec![],
        encoded: Some(true),
    }
    .encode_to_vec()
}

fn png_bytes(hwc: &[u8], h: u32, w: u32) -> Vec<u8> {
    let im = image::RgbImage::from_raw(w, h, hwc.to_vec()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    im.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn lmdb_encoded_datum_is_decoded_bgr_unless_forced() {
    let t = tempfile::tempdir().unwrap();
    let rgb_chw = img(1, 3, 2, 3);
    let png = png_bytes(&chw_to_hwc(&rgb_chw, 3, 2, 3), 2, 3);
    write_lmdb(t.path(), &[(key(0), encoded_datum(png, 4))]);
    let mut src = open(&DataSpec::new(t.path())).unwrap();
    let s = src.read(0).unwrap();
    assert_eq!(
        u8s(&s),
        reversed(&rgb_chw, 3).as_slice(),
        "Caffe decodes with OpenCV → BGR"
    );
    assert_eq!(s.label, Some(4));
    let mut spec = DataSpec::new(t.path());
    spec.channel_order = Some(ChannelOrder::Rgb);
    assert_eq!(
        u8s(&open(&spec).unwrap().read(0).unwrap()),
        rgb_chw.as_slice()
    );
    spec.color = ColorMode::Gray;
    assert_eq!(
        open(&spec).unwrap().read(0).unwrap().image.shape(),
        [1, 2, 3]
    );
}

#[test]
fn lmdb_corrupt_record_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    write_lmdb(
        t.path(),
        &[
            (key(0), encode_datum(1, 2, 2, &[1, 2, 3, 4], 0)),
            (key(1), vec![0xff, 0xff, 0xff, 0x07]),
        ],
    );
    let mut src = open(&DataSpec::new(t.path())).unwrap();
    src.read(0).unwrap();
    let e = format!("{:#}", src.read(1).unwrap_err());
    assert!(
        e.contains("record 1") && e.contains("not a valid Caffe Datum"),
        "{e}"
    );
}

#[test]
fn lmdb_datum_with_wrong_byte_count_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    write_lmdb(t.path(), &[(key(0), encode_datum(3, 4, 5, &[0; 10], 0))]);
    let e = format!(
        "{:#}",
        open(&DataSpec::new(t.path())).unwrap().read(0).unwrap_err()
    );
    assert!(e.contains("60 bytes but holds 10"), "{e}");
}

#[test]
fn image_of_another_shape_is_named() {
    let t = tempfile::tempdir().unwrap();
    let mut recs: Vec<_> = (0..5)
        .map(|i| (key(i), encode_datum(3, 4, 4, &img(i, 3, 4, 4), 0)))
        .collect();
    recs[3] = (key(3), encode_datum(1, 4, 4, &img(3, 1, 4, 4), 0));
    write_lmdb(t.path(), &recs);
    let mut src = open(&DataSpec::new(t.path())).unwrap();
    let e = format!(
        "{:#}",
        batches(&mut src, 2)
            .collect::<Result<Vec<_>>>()
            .unwrap_err()
    );
    assert!(
        e.contains("image 3 is 1×4×4") && e.contains("image 0 is 3×4×4"),
        "{e}"
    );
}

/// Corruption inside the tree (not just a short file) is an error naming the page, not a SIGBUS
/// or SIGSEGV: a root past the last page, bytes of every data page flipped one at a time,
/// and the input the fuzzer found killing the LMDB library.
#[test]
fn corrupt_lmdb_pages_are_errors_not_crashes() {
    let t = tempfile::tempdir().unwrap();
    let recs: Vec<_> = (0..40)
        .map(|i| (key(i), encode_datum(3, 8, 8, &img(i, 3, 8, 8), 0)))
        .collect();
    write_lmdb(t.path(), &recs);
    let data = t.path().join("data.mdb");
    let full = std::fs::read(&data).unwrap();
    let read_all = || -> Result<usize> {
        let mut src = open(&DataSpec::new(t.path()))?;
        let n = src.len();
        src.read_range(0..n).map(|v| v.len())
    };
    assert_eq!(read_all().unwrap(), 40);
    // The main database's root (dbs[1].md_root) in both meta pages, far past the file.
    let mut bad = full.clone();
    for meta in [0, 4096] {
        bad[meta + 16 + 72 + 40..meta + 16 + 72 + 48].copy_from_slice(&1_000_000u64.to_le_bytes());
    }
    std::fs::write(&data, &bad).unwrap();
    let e = format!("{:#}", read_all().unwrap_err());
    assert!(
        e.contains("corrupt LMDB") && e.contains("page 1000000"),
        "{e}"
    );
    // Every 29th byte of the data pages flipped in turn: never a crash; some flips are errors.
    let mut errors = 0;
    for at in (2 * 4096..full.len()).step_by(29) {
        let mut bad = full.clone();
        bad[at] ^= 0xa5;
        std::fs::write(&data, &bad).unwrap();
        errors += usize::from(read_all().is_err());
    }
    assert!(errors > 0);
    // The fuzzer's find (kept in its corpus).
    let found =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/lmdb/sigbus-regression.mdb");
    std::fs::copy(found, &data).unwrap();
    let e = format!("{:#}", read_all().unwrap_err());
    assert!(e.contains("LMDB"), "{e}");
}

/// A data.mdb cut short (a truncated copy, a full disk) is an error naming the sizes, not a
/// SIGBUS when LMDB touches a page past the end of the mapped file.
#[test]
fn truncated_lmdb_is_an_error_not_a_crash() {
    let t = tempfile::tempdir().unwrap();
    // Enough records for several pages of data and index.
    let recs: Vec<_> = (0..200)
        .map(|i| (key(i), encode_datum(3, 8, 8, &img(i, 3, 8, 8), 0)))
        .collect();
    write_lmdb(t.path(), &recs);
    let data = t.path().join("data.mdb");
    let full = std::fs::read(&data).unwrap();
    assert!(full.len() > 3 * 4096, "fixture too small: {}", full.len());
    open(&DataSpec::new(t.path())).unwrap();
    for cut in [full.len() / 2, 8192, 5000, 100, 0] {
        std::fs::write(&data, &full[..cut]).unwrap();
        let e = format!("{:#}", open(&DataSpec::new(t.path())).err().unwrap());
        assert!(
            e.contains("truncated") || e.contains("not an LMDB"),
            "cut at {cut}: {e}"
        );
    }
    // A corrupt page size is named too.
    let mut bad = full.clone();
    bad[16 + 24..16 + 28].copy_from_slice(&1000u32.to_le_bytes());
    std::fs::write(&data, &bad).unwrap();
    let e = format!("{:#}", open(&DataSpec::new(t.path())).err().unwrap());
    assert!(e.contains("page size 1000"), "{e}");
}

#[test]
fn empty_lmdb_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    write_lmdb(t.path(), &[]);
    let e = format!("{:#}", open(&DataSpec::new(t.path())).err().unwrap());
    assert!(e.contains("empty"), "{e}");
}

// ---------------------------------------------------------------- .npy

#[test]
fn npy_nhwc_u8_roundtrip_with_guessed_labels() {
    let t = tempfile::tempdir().unwrap();
    let (n, c, h, w) = (4, 3, 2, 5);
    let hwc: Vec<u8> = (0..n)
        .flat_map(|k| chw_to_hwc(&img(k, c, h, w), c, h, w))
        .collect();
    let p = t.path().join("test_4_u8_hwc.npy");
    write_npy_u8(&p, &[n as u64, h as u64, w as u64, c as u64], &hwc);
    write_npy::<u8>(&t.path().join("test_4_labels.npy"), &[4], &[9, 8, 7, 6]);
    let mut src = open(&DataSpec::new(&p)).unwrap();
    let all = read_all(&mut src);
    for (k, s) in all.iter().enumerate() {
        assert_eq!(u8s(s), img(k, c, h, w).as_slice());
        assert_eq!(s.label, Some(9 - k as i64));
    }
    // Forcing BGR on a stored array reverses it (stored arrays are taken to be RGB).
    let mut spec = DataSpec::new(&p);
    spec.channel_order = Some(ChannelOrder::Bgr);
    assert_eq!(
        u8s(&open(&spec).unwrap().read(2).unwrap()),
        reversed(&img(2, c, h, w), c).as_slice()
    );
}

#[test]
fn npy_nchw_f32_with_i64_and_i32_labels() {
    let t = tempfile::tempdir().unwrap();
    let data: Vec<f32> = (0..2 * 2 * 3 * 3).map(|i| i as f32 * 0.5 - 3.0).collect();
    let p = t.path().join("x.npy");
    write_npy::<f32>(&p, &[2, 2, 3, 3], &data);
    for (name, labels) in [("l64.npy", true), ("l32.npy", false)] {
        let lp = t.path().join(name);
        if labels {
            write_npy::<i64>(&lp, &[2], &[-1, 5]);
        } else {
            write_npy::<i32>(&lp, &[2, 1], &[-1, 5]);
        }
        let mut spec = DataSpec::new(&p);
        spec.layout = Layout::Nchw;
        spec.labels = Some(lp);
        let mut src = open(&spec).unwrap();
        let s = src.read(1).unwrap();
        assert_eq!(s.image.shape(), [2, 3, 3]);
        assert_eq!(s.image.pixels, Pixels::F32(data[18..].to_vec()));
        assert_eq!(s.label, Some(5));
        assert_eq!(src.read(0).unwrap().label, Some(-1));
    }
}

#[test]
fn npy_label_count_mismatch_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("images.npy");
    write_npy_u8(&p, &[3, 2, 2, 1], &[0; 12]);
    write_npy::<u8>(&t.path().join("labels.npy"), &[2], &[0, 1]);
    let e = format!("{:#}", open(&DataSpec::new(&p)).err().unwrap());
    assert!(e.contains("2 labels") && e.contains("3 images"), "{e}");
}

#[test]
fn npy_unsupported_dtype_and_rank_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("f64.npy");
    write_npy::<f64>(&p, &[1, 2, 2, 1], &[0.0; 4]);
    let e = format!("{:#}", open(&DataSpec::new(&p)).err().unwrap());
    assert!(e.contains("unsupported image dtype '<f8'"), "{e}");
    let p = t.path().join("rank2.npy");
    write_npy_u8(&p, &[2, 8], &[0; 16]);
    let e = format!("{:#}", open(&DataSpec::new(&p)).err().unwrap());
    assert!(e.contains("rank 2"), "{e}");
    let p = t.path().join("img.npy");
    write_npy_u8(&p, &[1, 2, 2], &[0; 4]);
    let lp = t.path().join("floatlabels.npy");
    write_npy::<f32>(&lp, &[1], &[0.0]);
    let mut spec = DataSpec::new(&p);
    spec.labels = Some(lp);
    let e = format!("{:#}", open(&spec).err().unwrap());
    assert!(e.contains("unsupported label dtype"), "{e}");
}

#[test]
fn npy_empty_and_truncated_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("empty.npy");
    write_npy_u8(&p, &[0, 2, 2, 3], &[]);
    assert!(format!("{:#}", open(&DataSpec::new(&p)).err().unwrap()).contains("empty"));
    let p = t.path().join("trunc.npy");
    write_npy_u8(&p, &[2, 2, 2, 3], &[0; 24]);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    assert!(format!("{:#}", open(&DataSpec::new(&p)).err().unwrap()).contains("truncated"));
}

#[test]
fn project_glyphs_npy_reads() {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/glyphs");
    let mut src = open(&DataSpec::new(d.join("test_u8_hwc.npy"))).unwrap();
    assert!(!src.is_empty());
    let s = src.read(src.len() - 1).unwrap();
    assert!(
        s.label.is_some(),
        "test_labels.npy is found beside the images"
    );
}

// ---------------------------------------------------------------- folder tree

fn write_png(path: &Path, chw: &[u8], h: usize, w: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        png_bytes(&chw_to_hwc(chw, 3, h, w), h as u32, w as u32),
    )
    .unwrap();
}

#[test]
fn folder_tree_roundtrip_bgr_by_default() {
    let t = tempfile::tempdir().unwrap();
    write_png(&t.path().join("dog/b.png"), &img(2, 3, 3, 4), 3, 4);
    write_png(&t.path().join("dog/a.png"), &img(1, 3, 3, 4), 3, 4);
    write_png(&t.path().join("cat/z.png"), &img(0, 3, 3, 4), 3, 4);
    std::fs::write(t.path().join("dog/notes.txt"), "not an image").unwrap();
    let mut src = open(&DataSpec::new(t.path())).unwrap();
    let all = read_all(&mut src);
    assert_eq!(all.len(), 3);
    for (k, s) in all.iter().enumerate() {
        assert_eq!(u8s(s), reversed(&img(k, 3, 3, 4), 3).as_slice());
    }
    assert_eq!(
        all.iter().map(|s| s.label.unwrap()).collect::<Vec<_>>(),
        vec![0, 1, 1]
    );
    // Explicit classes order and forced RGB.
    let cf = t.path().join("classes.txt");
    std::fs::write(&cf, "dog\ncat\n").unwrap();
    let mut spec = DataSpec::new(t.path());
    spec.classes = Some(cf.clone());
    spec.channel_order = Some(ChannelOrder::Rgb);
    let all = read_all(&mut open(&spec).unwrap());
    assert_eq!(
        all.iter().map(|s| s.label.unwrap()).collect::<Vec<_>>(),
        vec![0, 0, 1]
    );
    assert_eq!(u8s(&all[0]), img(1, 3, 3, 4).as_slice());
    std::fs::write(&cf, "dog\n").unwrap();
    assert!(format!("{:#}", open(&spec).err().unwrap()).contains("'cat' is not listed"));
}

#[test]
fn folder_tree_with_a_bad_image_names_it() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("a")).unwrap();
    std::fs::write(t.path().join("a/x.png"), b"not a png").unwrap();
    let e = format!(
        "{:#}",
        open(&DataSpec::new(t.path())).unwrap().read(0).unwrap_err()
    );
    assert!(e.contains("x.png") && e.contains("cannot decode"), "{e}");
}

// ---------------------------------------------------------------- IDX, CIFAR

#[test]
fn idx_roundtrip() {
    let t = tempfile::tempdir().unwrap();
    let (n, h, w) = (3u32, 4u32, 5u32);
    let mut b = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        b.extend(d.to_be_bytes());
    }
    for k in 0..n as usize {
        b.extend(img(k, 1, 4, 5));
    }
    let ip = t.path().join("t10k-images-idx3-ubyte");
    std::fs::write(&ip, &b).unwrap();
    let mut l = vec![0, 0, 8, 1];
    l.extend(n.to_be_bytes());
    l.extend([7, 2, 1]);
    std::fs::write(t.path().join("t10k-labels-idx1-ubyte"), &l).unwrap();
    let all = read_all(&mut open(&DataSpec::new(&ip)).unwrap());
    for (k, s) in all.iter().enumerate() {
        assert_eq!(s.image.shape(), [1, 4, 5]);
        assert_eq!(u8s(s), img(k, 1, 4, 5).as_slice());
    }
    assert_eq!(
        all.iter().map(|s| s.label.unwrap()).collect::<Vec<_>>(),
        vec![7, 2, 1]
    );
    std::fs::write(&ip, [0, 0, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert!(format!("{:#}", open(&DataSpec::new(&ip)).err().unwrap()).contains("magic"));
}

#[test]
fn cifar_bin_roundtrip() {
    let t = tempfile::tempdir().unwrap();
    let mut b = Vec::new();
    for k in 0..4 {
        b.push(k as u8 + 1);
        b.extend(img(k, 3, 32, 32));
    }
    std::fs::write(t.path().join("data_batch_1.bin"), &b[..2 * 3073]).unwrap();
    std::fs::write(t.path().join("data_batch_2.bin"), &b[2 * 3073..]).unwrap();
    let all = read_all(&mut open(&DataSpec::new(t.path())).unwrap());
    assert_eq!(all.len(), 4);
    for (k, s) in all.iter().enumerate() {
        assert_eq!(
            u8s(s),
            img(k, 3, 32, 32).as_slice(),
            "CIFAR bytes (RGB) are kept as stored, as Caffe's converter does"
        );
        assert_eq!(s.label, Some(k as i64 + 1));
    }
    let one = open(&DataSpec::new(t.path().join("data_batch_2.bin"))).unwrap();
    assert_eq!(one.len(), 2);
    std::fs::write(t.path().join("bad.bin"), [0u8; 100]).unwrap();
    assert!(format!(
        "{:#}",
        open(&DataSpec::new(t.path().join("bad.bin")))
            .err()
            .unwrap()
    )
    .contains("whole number"));
}

// ---------------------------------------------------------------- open() errors

#[test]
fn missing_and_unknown_paths_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        open(&DataSpec::new(t.path().join("nope"))).err().unwrap()
    );
    assert!(e.contains("does not exist"), "{e}");
    std::fs::write(t.path().join("x.csv"), "1,2").unwrap();
    let e = format!(
        "{:#}",
        open(&DataSpec::new(t.path().join("x.csv"))).err().unwrap()
    );
    assert!(e.contains("unknown data format"), "{e}");
    let e = format!("{:#}", open(&DataSpec::new(t.path())).err().unwrap());
    assert!(e.contains("holds none of them"), "{e}");
}

// ---------------------------------------------------------------- prototxt data layers

#[test]
fn layer_paths_missing_mention_data_flag() {
    let opts = layer::LayerOptions::default();
    for l in [
        DataLayerSource::Db {
            source: "/home/ubuntu/nope_lmdb".into(),
            backend: "LMDB".into(),
        },
        DataLayerSource::ImageList {
            source: "/nope/list.txt".into(),
            root_folder: String::new(),
            new_height: 0,
            new_width: 0,
            is_color: true,
        },
        DataLayerSource::Hdf5List {
            source: "/nope/h5.txt".into(),
        },
    ] {
        let e = format!("{:#}", layer::open_layer(&l, &opts).err().unwrap());
        assert!(e.contains("--data PATH") && e.contains("/nope"), "{e}");
    }
    let e = format!(
        "{:#}",
        layer::open_layer(
            &DataLayerSource::Db {
                source: "x".into(),
                backend: "LEVELDB".into()
            },
            &opts
        )
        .err()
        .unwrap()
    );
    assert!(e.contains("LEVELDB") && e.contains("--data PATH"), "{e}");
}

#[test]
fn layer_lmdb_opens() {
    let t = tempfile::tempdir().unwrap();
    write_lmdb(
        t.path(),
        &[(key(0), encode_datum(1, 2, 2, &[1, 2, 3, 4], 3))],
    );
    let l = DataLayerSource::Db {
        source: t.path().to_string_lossy().into(),
        backend: "LMDB".into(),
    };
    let mut src = layer::open_layer(&l, &Default::default()).unwrap();
    assert_eq!(src.read(0).unwrap().label, Some(3));
}

#[test]
fn image_list_layer_resizes_and_grays() {
    let t = tempfile::tempdir().unwrap();
    write_png(&t.path().join("im/a.png"), &img(0, 3, 4, 4), 4, 4);
    write_png(&t.path().join("im/b.png"), &img(1, 3, 2, 6), 2, 6);
    let list = t.path().join("list.txt");
    std::fs::write(&list, "a.png 3\n\nb.png 5\n").unwrap();
    let root = format!("{}/im/", t.path().display());
    let mk = |h, w, c| DataLayerSource::ImageList {
        source: list.to_string_lossy().into(),
        root_folder: root.clone(),
        new_height: h,
        new_width: w,
        is_color: c,
    };
    let mut src = layer::open_layer(&mk(2, 2, true), &Default::default()).unwrap();
    let all = read_all(&mut src);
    assert_eq!(
        all.iter().map(|s| s.label.unwrap()).collect::<Vec<_>>(),
        vec![3, 5]
    );
    assert_eq!(all[0].image.shape(), [3, 2, 2]);
    // 4×4 → 2×2 is OpenCV's area average; BGR order.
    let a = reversed(&img(0, 3, 4, 4), 3);
    let expect00 = ((a[0] as u32 + a[1] as u32 + a[4] as u32 + a[5] as u32 + 2) >> 2) as u8;
    assert_eq!(u8s(&all[0])[0], expect00);
    let mut gray = layer::open_layer(&mk(0, 0, false), &Default::default()).unwrap();
    assert_eq!(gray.read(0).unwrap().image.shape(), [1, 4, 4]);
    // Without resizing the two images differ in size: named.
    let e = format!("{:#}", read_all_err(&mut *gray));
    assert!(e.contains("image 1 is 1×2×6"), "{e}");
}

fn read_all_err(src: &mut dyn Source) -> anyhow::Error {
    batches(src, 8).collect::<Result<Vec<_>>>().unwrap_err()
}

#[test]
fn hdf5_list_layer_roundtrip() {
    let t = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for f in 0..2 {
        let data: Vec<f32> = (0..3 * 2 * 2 * 2)
            .map(|i| (i + 100 * f) as f32 * 0.25)
            .collect();
        let label: Vec<f32> = (0..3).map(|i| (i + 3 * f) as f32).collect();
        let mut b = hdf5_pure::FileBuilder::new();
        b.create_dataset("data")
            .with_f32_data(&data)
            .with_shape(&[3, 2, 2, 2]);
        b.create_dataset("label")
            .with_f32_data(&label)
            .with_shape(&[3]);
        let p = t.path().join(format!("part{f}.h5"));
        b.write(&p).unwrap();
        paths.push(p.to_string_lossy().to_string());
    }
    let list = t.path().join("h5.txt");
    std::fs::write(&list, paths.join("\n") + "\n").unwrap();
    let mut src = layer::open_layer(
        &DataLayerSource::Hdf5List {
            source: list.to_string_lossy().into(),
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(src.len(), 6);
    let all = read_all(&mut src);
    assert_eq!(
        all.iter().map(|s| s.label.unwrap()).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    let s4 = &all[4];
    assert_eq!(s4.image.shape(), [2, 2, 2]);
    assert_eq!(
        s4.image.pixels,
        Pixels::F32((8..16).map(|i| (i + 100) as f32 * 0.25).collect())
    );
}

// ---------------------------------------------------------------- preprocessing

fn u8_image(c: usize, h: usize, w: usize, v: Vec<u8>) -> Image {
    Image {
        channels: c,
        height: h,
        width: w,
        pixels: Pixels::U8(v),
    }
}

#[test]
fn centre_crop_then_mean_file_then_scale() {
    let (c, h, w) = (2, 4, 5);
    let im = u8_image(c, h, w, (0..40).collect());
    let mean: Vec<f32> = (0..40).map(|i| i as f32 * 0.5).collect();
    let p = Preprocess {
        scale: 0.25,
        crop_size: 2,
        ..Default::default()
    };
    let pp = Preprocessor::new(&p, Some(Tensor::new(vec![1, 2, 4, 5], mean.clone()))).unwrap();
    assert_eq!(pp.crop_offsets(4, 5), (1, 1));
    let out = pp.apply(&im).unwrap();
    let mut expect = Vec::new();
    for ch in 0..2 {
        for y in 1..3 {
            for x in 1..3 {
                let i = (ch * h + y) * w + x;
                expect.push((i as f32 - mean[i]) * 0.25);
            }
        }
    }
    assert_eq!(out, expect);
}

#[test]
fn mean_values_one_or_per_channel() {
    let im = u8_image(3, 1, 2, vec![10, 20, 30, 40, 50, 60]);
    let one = Preprocessor::new(
        &Preprocess {
            scale: 1.0,
            mean_values: vec![5.0],
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(
        one.apply(&im).unwrap(),
        vec![5.0, 15.0, 25.0, 35.0, 45.0, 55.0]
    );
    let per = Preprocessor::new(
        &Preprocess {
            scale: 2.0,
            mean_values: vec![10.0, 20.0, 30.0],
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(
        per.apply(&im).unwrap(),
        vec![0.0, 20.0, 20.0, 40.0, 40.0, 60.0]
    );
    let two = Preprocessor::new(
        &Preprocess {
            scale: 1.0,
            mean_values: vec![1.0, 2.0],
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert!(format!("{:#}", two.apply(&im).unwrap_err()).contains("2 mean_value(s)"));
}

#[test]
fn mean_file_of_wrong_shape_and_conflicts_are_errors() {
    let p = Preprocess {
        scale: 1.0,
        ..Default::default()
    };
    let pp = Preprocessor::new(&p, Some(Tensor::new(vec![3, 32, 32], vec![0.0; 3072]))).unwrap();
    let e = format!(
        "{:#}",
        pp.apply(&u8_image(3, 28, 28, vec![0; 3 * 28 * 28]))
            .unwrap_err()
    );
    assert!(e.contains("3×32×32") && e.contains("3×28×28"), "{e}");
    let both = Preprocess {
        mean_values: vec![1.0],
        ..p.clone()
    };
    assert!(Preprocessor::new(&both, Some(Tensor::new(vec![1], vec![0.0]))).is_err());
    let e = format!(
        "{:#}",
        Preprocessor::load(
            &Preprocess {
                mean_file: Some("/home/ubuntu/mean.binaryproto".into()),
                ..p.clone()
            },
            None
        )
        .unwrap_err()
    );
    assert!(e.contains("--mean-file"), "{e}");
    let crop = Preprocessor::new(&Preprocess { crop_size: 9, ..p }, None).unwrap();
    assert!(crop.apply(&u8_image(1, 4, 4, vec![0; 16])).is_err());
}

#[test]
fn batches_pack_nchw_and_keep_u8() {
    let samples: Vec<Sample> = (0..3)
        .map(|k| Sample {
            image: u8_image(2, 1, 2, img(k, 2, 1, 2)),
            label: Some(k as i64),
        })
        .collect();
    let pp = Preprocessor::new(
        &Preprocess {
            scale: 1.0,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let b = pp.batch(&samples).unwrap();
    assert_eq!(b.shape, [2, 1, 2]);
    assert_eq!(b.len(), 3);
    assert_eq!(
        b.image(2),
        img(2, 2, 1, 2)
            .iter()
            .map(|&v| v as f32)
            .collect::<Vec<_>>()
            .as_slice()
    );
    assert_eq!(b.labels, vec![Some(0), Some(1), Some(2)]);
    let (raw, shape) = u8_batch(&samples).unwrap();
    assert_eq!(shape, [2, 1, 2]);
    assert_eq!(
        raw,
        (0..3).flat_map(|k| img(k, 2, 1, 2)).collect::<Vec<_>>()
    );
}

#[test]
fn options_parse_and_colour_flags_map() {
    assert_eq!("BGR".parse::<ChannelOrder>().unwrap(), ChannelOrder::Bgr);
    assert_eq!("rgb".parse::<ChannelOrder>().unwrap(), ChannelOrder::Rgb);
    assert!("rbg".parse::<ChannelOrder>().is_err());
    assert_eq!("nchw".parse::<Layout>().unwrap(), Layout::Nchw);
    assert!("nhw".parse::<Layout>().is_err());
    let mut p = Preprocess {
        force_gray: true,
        ..Default::default()
    };
    assert_eq!(ColorMode::from_preprocess(&p).unwrap(), ColorMode::Gray);
    p.force_color = true;
    assert!(ColorMode::from_preprocess(&p).is_err());
    p.force_gray = false;
    assert_eq!(ColorMode::from_preprocess(&p).unwrap(), ColorMode::Color);
}

#[test]
fn folder_tree_force_color_and_gray() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("only");
    std::fs::create_dir_all(&dir).unwrap();
    image::GrayImage::from_raw(3, 2, vec![0, 50, 100, 150, 200, 250])
        .unwrap()
        .save(dir.join("g.png"))
        .unwrap();
    write_png(&dir.join("h.png"), &img(0, 3, 2, 3), 2, 3);
    let mut spec = DataSpec::new(t.path());
    spec.color = ColorMode::Color;
    let all = read_all(&mut open(&spec).unwrap());
    assert_eq!(all[0].image.shape(), [3, 2, 3]);
    assert_eq!(
        u8s(&all[0]),
        [0, 50, 100, 150, 200, 250].repeat(3).as_slice(),
        "gray replicated"
    );
    spec.color = ColorMode::Gray;
    let all = read_all(&mut open(&spec).unwrap());
    assert_eq!(all[1].image.shape(), [1, 2, 3]);
    let rgb = chw_to_hwc(&img(0, 3, 2, 3), 3, 2, 3);
    assert_eq!(u8s(&all[1]), imgops::rgb_to_gray(&rgb).as_slice());
    // Native: a gray file stays one channel, so a mixed folder is refused with the index.
    let e = format!(
        "{:#}",
        read_all_err(&mut *open(&DataSpec::new(t.path())).unwrap())
    );
    assert!(e.contains("image 1 is 3×2×3"), "{e}");
}

// ---------------------------------------------------------------- subsets

struct Counting(usize);
impl Source for Counting {
    fn len(&self) -> usize {
        self.0
    }
    fn describe(&self) -> String {
        "counting".into()
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        check_index(index, self.0, &"counting")?;
        Ok(Sample {
            image: u8_image(1, 1, 1, vec![index as u8]),
            label: Some(index as i64),
        })
    }
}

fn labels_of(src: &mut dyn Source) -> Vec<i64> {
    read_all(src).iter().map(|s| s.label.unwrap()).collect()
}

#[test]
fn window_and_split_are_deterministic_and_disjoint() {
    let mut w = Subset::window(Counting(10), 3, Some(4)).unwrap();
    assert_eq!(labels_of(&mut w), vec![3, 4, 5, 6]);
    assert!(w.read(4).is_err());
    assert_eq!(Subset::window(Counting(10), 8, Some(5)).unwrap().len(), 2);
    assert!(Subset::window(Counting(10), 10, None).is_err());
    let at = parse_split("80:20").unwrap();
    assert_eq!(at, SplitAt::Fraction(0.8));
    let mut a = Subset::split(Counting(10), at, Part::First).unwrap();
    let mut b = Subset::split(Counting(10), at, Part::Second).unwrap();
    assert_eq!(labels_of(&mut a), (0..8).collect::<Vec<_>>());
    assert_eq!(labels_of(&mut b), vec![8, 9]);
    assert_eq!(parse_split("3").unwrap(), SplitAt::Count(3));
    assert_eq!(parse_split("0.5").unwrap(), SplitAt::Fraction(0.5));
    assert!(parse_split("x:y").is_err() && parse_split("1.5").is_err());
    assert!(Subset::split(Counting(2), SplitAt::Count(3), Part::First).is_err());
    // Subsets nest: a window of a split.
    let mut ab = Subset::window(
        Subset::split(Counting(10), at, Part::First).unwrap(),
        6,
        None,
    )
    .unwrap();
    assert_eq!(labels_of(&mut ab), vec![6, 7]);
}

// ---------------------------------------------------------------- ../shared

#[test]
#[ignore = "needs ../shared"]
fn shared_cifar_lmdb_equals_npy_byte_for_byte() {
    let d = crate::shared_dir().join("data/cifar10");
    let mut lmdb = open(&DataSpec::new(d.join("test_1017_lmdb"))).unwrap();
    let mut npy = open(&DataSpec::new(d.join("test_1017_u8_hwc.npy"))).unwrap();
    assert_eq!(lmdb.len(), 1017);
    assert_eq!(npy.len(), 1017);
    let labels = npy::read_labels(&d.join("test_1017_labels.npy")).unwrap();
    let mut n = 0;
    for (a, b) in batches(&mut lmdb, 128).zip(batches(&mut npy, 128)) {
        for (x, y) in a.unwrap().iter().zip(&b.unwrap()) {
            assert_eq!(x.image.shape(), [3, 32, 32]);
            assert_eq!(x.image, y.image, "image {n}");
            assert_eq!(x.label, y.label, "label {n}");
            assert_eq!(x.label, Some(labels[n]));
            n += 1;
        }
    }
    assert_eq!(n, 1017);
}

#[test]
#[ignore = "needs ../shared"]
fn shared_train_npy_and_mean_file() {
    let s = crate::shared_dir();
    let mut train = open(&DataSpec::new(s.join("data/cifar10/train_5085_u8_hwc.npy"))).unwrap();
    assert_eq!(train.len(), 5085);
    let pp = Preprocessor::load(
        &Preprocess {
            scale: 1.0,
            ..Default::default()
        },
        Some(&s.join("models/arm-cifar10-m4/mean.binaryproto")),
    )
    .unwrap();
    let batch = pp.batch(&train.read_range(5000..5085).unwrap()).unwrap();
    assert_eq!(batch.len(), 85);
    assert_eq!(batch.shape, [3, 32, 32]);
    assert!(batch.labels.iter().all(|l| (0..10).contains(&l.unwrap())));
}
