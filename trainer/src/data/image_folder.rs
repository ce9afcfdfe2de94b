//! An image folder in torchvision's ImageFolder layout (`root/class/*.png|jpg|jpeg`).
//!
//! Each subfolder of the root is a class, numbered in sorted name order; its `.png`, `.jpg` and
//! `.jpeg` files (any letter case) are its samples, in sorted file name order. Hidden files and
//! folders (a leading `.`), other files, and folders nested inside a class folder are ignored
//! (torchvision walks nested folders too; this reader does not). Every image is decoded,
//! converted to the declared mode (1 channel: grayscale, 3: RGB, dropping any alpha), resized to
//! the declared height and width with a triangle (bilinear) filter, which is deterministic, and
//! stored channel-major as bytes (`max` 255). Files are checked for size before they are read,
//! and decoding is limited in image side and memory.

use std::ffi::OsString;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use hivemesh_evolve::arch::Shape;
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageBuffer, ImageReader, Limits, Pixel};
use rayon::prelude::*;

use super::{Dataset, MAX_CLASSES, MAX_DATASET_BYTES};
use crate::error::DataError;

/// Most images a folder may hold.
pub const MAX_IMAGE_FILES: usize = 10_000_000;
/// Largest image file read (bytes).
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// Largest image side (pixels), decoded or declared.
const MAX_IMAGE_SIDE: u32 = 16_384;
/// Most memory one image's decoder may allocate (bytes).
const MAX_DECODE_BYTES: u64 = 512 << 20;
/// Images decoded in parallel at a time.
const BATCH: usize = 256;

/// The image extensions read (compared in lower case).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Reads an image folder as a dataset of the declared `shape` (`Shape::Image` with 1 or 3
/// channels) and returns it with the class names (class `i` is `names[i]`).
pub fn load_image_folder(root: &Path, shape: Shape) -> Result<(Dataset, Vec<String>), DataError> {
    let target = Target::of(root, shape)?;
    let classes = list_classes(root)?;
    let mut files: Vec<(u16, PathBuf)> = Vec::new();
    for (label, (name, dir)) in classes.iter().enumerate() {
        let found = list_images(root, name, dir, MAX_IMAGE_FILES - files.len())?;
        if found.is_empty() {
            return Err(DataError::Member {
                path: root.to_path_buf(),
                member: name.clone(),
                reason: "a class folder with no .png, .jpg or .jpeg image".into(),
            });
        }
        files.extend(found.into_iter().map(|p| (label as u16, p)));
    }
    let total = files.len() as u64 * shape.numel();
    if total > MAX_DATASET_BYTES {
        return Err(DataError::Invalid(format!(
            "{}: {} images of shape {shape:?} would take {total} bytes, over the \
             {MAX_DATASET_BYTES}-byte limit of a dataset",
            root.display(),
            files.len()
        )));
    }
    let data = decode_all(root, &files, target)?;
    let labels = files.iter().map(|&(l, _)| l).collect();
    let name = root
        .file_name()
        .map_or_else(|| "images".into(), |n| n.to_string_lossy().into_owned());
    let d = Dataset::of_bytes(&name, shape, classes.len() as u32, 255, data, labels)?;
    Ok((d, classes.into_iter().map(|(n, _)| n).collect()))
}

/// What every image becomes: channels (1 or 3), height and width.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// 1 (grayscale) or 3 (RGB).
    c: u32,
    /// Height in pixels.
    h: u32,
    /// Width in pixels.
    w: u32,
}

impl Target {
    fn of(root: &Path, shape: Shape) -> Result<Target, DataError> {
        match shape {
            Shape::Image { c, h, w }
                if (c == 1 || c == 3)
                    && (1..=MAX_IMAGE_SIDE).contains(&h)
                    && (1..=MAX_IMAGE_SIDE).contains(&w) =>
            {
                Ok(Target { c, h, w })
            }
            _ => Err(DataError::Invalid(format!(
                "{}: an image folder needs an image shape of 1 (grayscale) or 3 (RGB) channels \
                 and a height and width from 1 to {MAX_IMAGE_SIDE}, not {shape:?}",
                root.display()
            ))),
        }
    }
}

/// An I/O error naming `path`.
fn io_error(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Whether a directory entry's name starts with a dot.
fn is_hidden(name: &OsString) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// The class folders of the root (not hidden), sorted by name, with their paths.
fn list_classes(root: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io_error(root))? {
        let entry = entry.map_err(io_error(root))?;
        let (name, path) = (entry.file_name(), entry.path());
        if is_hidden(&name) || !path.is_dir() {
            continue;
        }
        let Some(name) = name.to_str() else {
            return Err(DataError::Member {
                path: root.to_path_buf(),
                member: name.to_string_lossy().into_owned(),
                reason: "a class folder whose name is not UTF-8".into(),
            });
        };
        if classes.len() as u32 >= MAX_CLASSES {
            return Err(DataError::Invalid(format!(
                "{}: more than {MAX_CLASSES} class folders",
                root.display()
            )));
        }
        classes.push((name.to_string(), path));
    }
    if classes.len() < 2 {
        return Err(DataError::Invalid(format!(
            "{}: {} class folders (an image folder needs at least 2 subfolders, one per class, \
             holding .png or .jpg images)",
            root.display(),
            classes.len()
        )));
    }
    classes.sort_unstable();
    Ok(classes)
}

/// The images of one class folder in sorted file name order; an error past `room` files.
fn list_images(
    root: &Path,
    class: &str,
    dir: &Path,
    room: usize,
) -> Result<Vec<PathBuf>, DataError> {
    let mut found: Vec<(OsString, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let (name, path) = (entry.file_name(), entry.path());
        let image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_hidden(&name) || !image || !path.is_file() {
            continue;
        }
        if found.len() >= room {
            return Err(DataError::Member {
                path: root.to_path_buf(),
                member: class.to_string(),
                reason: format!("the folder holds more than {MAX_IMAGE_FILES} images in all"),
            });
        }
        found.push((name, path));
    }
    found.sort_unstable();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Decodes every image in order (a batch at a time in parallel) into one buffer.
fn decode_all(root: &Path, files: &[(u16, PathBuf)], target: Target) -> Result<Vec<u8>, DataError> {
    let mut data = Vec::new();
    for batch in files.chunks(BATCH) {
        let decoded: Vec<Result<Vec<u8>, DataError>> = batch
            .par_iter()
            .map(|(_, path)| load_image(root, path, target))
            .collect();
        for image in decoded {
            data.extend_from_slice(&image?);
        }
    }
    Ok(data)
}

/// Reads, decodes, converts and resizes one image into channel-major bytes.
fn load_image(root: &Path, path: &Path, target: Target) -> Result<Vec<u8>, DataError> {
    let bad = |reason: String| DataError::Member {
        path: root.to_path_buf(),
        member: path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string(),
        reason,
    };
    let size = std::fs::metadata(path).map_err(io_error(path))?.len();
    if size > MAX_IMAGE_FILE_BYTES {
        let reason = format!("{size} bytes, over the {MAX_IMAGE_FILE_BYTES}-byte image limit");
        return Err(bad(reason));
    }
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    file.take(MAX_IMAGE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(bad(format!(
            "grew past the {MAX_IMAGE_FILE_BYTES}-byte image limit"
        )));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(io_error(path))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| bad(format!("does not decode as an image: {e}")))?;
    Ok(channel_major(&image, target))
}

/// The image converted to the target mode and size, channel-major.
fn channel_major(image: &DynamicImage, t: Target) -> Vec<u8> {
    match t.c {
        1 => resized(image.to_luma8(), t).into_raw(),
        _ => planes(&resized(image.to_rgb8(), t)),
    }
}

/// The image at the target size (unchanged if it already is).
fn resized<P: Pixel<Subpixel = u8> + 'static>(
    image: ImageBuffer<P, Vec<u8>>,
    t: Target,
) -> ImageBuffer<P, Vec<u8>> {
    match image.dimensions() == (t.w, t.h) {
        true => image,
        false => imageops::resize(&image, t.w, t.h, FilterType::Triangle),
    }
}

/// Interleaved pixels as one plane per channel.
fn planes<P: Pixel<Subpixel = u8>>(image: &ImageBuffer<P, Vec<u8>>) -> Vec<u8> {
    let channels = usize::from(P::CHANNEL_COUNT);
    let plane = image.width() as usize * image.height() as usize;
    let mut out = vec![0u8; channels * plane];
    for (i, p) in image.pixels().enumerate() {
        for (ch, &v) in p.channels().iter().enumerate() {
            out[ch * plane + i] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, Luma, Rgb, RgbImage};

    use super::*;
    use crate::data::Values;

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hm-imgdir-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).expect("tmp");
        dir
    }

    /// `root/bird/{a.png, B.PNG}`, `root/cat/c.jpg`, and files and folders to be ignored.
    fn folder(tag: &str) -> PathBuf {
        let root = tmp(tag);
        for dir in ["bird", "cat", ".hidden", "bird/nested"] {
            std::fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        RgbImage::from_pixel(4, 4, Rgb([10, 200, 30]))
            .save(root.join("bird/a.png"))
            .expect("png");
        GrayImage::from_fn(2, 2, |x, y| Luma([(x * 100 + y * 50) as u8]))
            .save(root.join("bird/B.PNG"))
            .expect("gray png");
        RgbImage::from_pixel(8, 8, Rgb([0, 0, 250]))
            .save(root.join("cat/c.jpg"))
            .expect("jpeg");
        RgbImage::new(2, 2)
            .save(root.join(".hidden/x.png"))
            .expect("png");
        RgbImage::new(2, 2)
            .save(root.join("bird/nested/x.png"))
            .expect("png");
        RgbImage::new(2, 2)
            .save(root.join("bird/.x.png"))
            .expect("png");
        std::fs::write(root.join("bird/notes.txt"), b"not an image").expect("txt");
        std::fs::write(root.join("labels.csv"), b"a file in the root").expect("csv");
        root
    }

    #[test]
    fn classes_samples_and_pixels_follow_the_folder() {
        let root = folder("rgb");
        let (d, names) = load_image_folder(&root, Shape::Image { c: 3, h: 2, w: 2 }).expect("ok");
        assert_eq!(names, vec!["bird", "cat"]);
        assert_eq!((d.len(), d.classes), (3, 2));
        assert_eq!(d.labels, vec![0, 0, 1], "B.PNG and a.png, then c.jpg");
        let Values::U8 { max, data } = &d.values else {
            panic!("bytes expected")
        };
        assert_eq!(*max, 255);
        // Sorted file names: "B.PNG" < "a.png". The gray image is the same in every channel.
        let gray = [0, 100, 50, 150];
        assert_eq!(&data[..12], [gray, gray, gray].concat());
        assert_eq!(
            &data[12..24],
            [[10; 4], [200; 4], [30; 4]].concat(),
            "solid colour"
        );
        let blue = &data[24..36];
        assert!(
            blue[..8].iter().all(|&v| v < 10) && blue[8..].iter().all(|&v| v > 240),
            "{blue:?}"
        );
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn grayscale_conversion_and_resizing_are_deterministic() {
        let root = folder("gray");
        let shape = Shape::Image { c: 1, h: 3, w: 5 };
        let (d, _) = load_image_folder(&root, shape).expect("ok");
        assert_eq!(d.shape, shape);
        assert_eq!(d.values.len(), 3 * 15);
        let (again, _) = load_image_folder(&root, shape).expect("ok");
        assert_eq!(d.id(), again.id());
        let Values::U8 { data, .. } = &d.values else {
            panic!("bytes expected")
        };
        let solid = &data[15..30];
        assert!(
            solid.iter().all(|&v| v == solid[0]),
            "a solid image stays solid: {solid:?}"
        );
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn bad_images_shapes_and_layouts_say_what_is_wrong() {
        let root = folder("bad");
        let msg = |r: Result<(Dataset, Vec<String>), DataError>| r.expect_err("bad").to_string();
        let shape = Shape::Image { c: 3, h: 2, w: 2 };
        assert!(msg(load_image_folder(&root, Shape::Flat(4))).contains("1 (grayscale) or 3"));
        assert!(msg(load_image_folder(&root, Shape::Image { c: 2, h: 2, w: 2 })).contains("or 3"));
        let huge = Shape::Image {
            c: 3,
            h: u32::MAX,
            w: u32::MAX,
        };
        assert!(msg(load_image_folder(&root, huge)).contains("from 1 to 16384"));
        std::fs::write(root.join("cat/broken.png"), b"\x89PNG\r\n\x1a\n truncated").expect("w");
        let m = msg(load_image_folder(&root, shape));
        assert!(m.contains("(cat/broken.png): does not decode"), "{m}");
        std::fs::remove_file(root.join("cat/broken.png")).expect("rm");
        std::fs::create_dir(root.join("dog")).expect("mkdir");
        let m = msg(load_image_folder(&root, shape));
        assert!(m.contains("(dog): a class folder with no .png"), "{m}");
        std::fs::remove_dir_all(root.join("dog")).expect("rm");
        std::fs::remove_dir_all(root.join("cat")).expect("rm");
        let m = msg(load_image_folder(&root, shape));
        assert!(m.contains("1 class folders"), "{m}");
        let m = msg(load_image_folder(&root.join("absent"), shape));
        assert!(m.contains("absent"), "{m}");
        std::fs::remove_dir_all(&root).ok();
    }
}
