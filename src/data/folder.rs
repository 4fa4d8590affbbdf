//! A folder tree `root/<class>/<image>.png|jpg|jpeg|bmp`: label = position of the class in the
//! sorted folder names (or in an explicit classes file, one name per line). Files are sorted by
//! name so the order (and any `--split`) is reproducible. Images are decoded on read.

use super::{check_index, imgops, ChannelOrder, ColorMode, OrderPolicy, Sample, Source};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// Whether a path names an image file nnquant can decode (by extension).
pub fn is_image_file(p: &Path) -> bool {
    p.extension()
        .map(|e| EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
        .unwrap_or(false)
}

/// Decoded image files with labels.
pub struct FolderSource {
    root: PathBuf,
    pub classes: Vec<String>,
    files: Vec<(PathBuf, i64)>,
    color: ColorMode,
    order: OrderPolicy,
}

impl FolderSource {
    pub fn open(
        root: &Path,
        classes_file: Option<&Path>,
        color: ColorMode,
        order: Option<ChannelOrder>,
    ) -> Result<Self> {
        let shown = root.display();
        let mut dirs: Vec<String> = std::fs::read_dir(root)
            .with_context(|| format!("cannot list {shown}"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        dirs.sort();
        let classes = match classes_file {
            Some(cf) => {
                let text = crate::fsio::read_text(cf, "the classes file")?;
                let classes: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                ensure!(
                    !classes.is_empty(),
                    "the classes file {} lists no class",
                    cf.display()
                );
                for d in &dirs {
                    ensure!(
                        classes.contains(d),
                        "{shown}: folder '{d}' is not listed in the classes file {}; list it or move it away",
                        cf.display()
                    );
                }
                classes
            }
            None => dirs.clone(),
        };
        let mut files = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            if !dir.is_dir() {
                bail!(
                    "{shown}: the class '{class}' has no folder {}",
                    dir.display()
                );
            }
            let mut imgs: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_image_file(p))
                .collect();
            imgs.sort();
            files.extend(imgs.into_iter().map(|p| (p, label as i64)));
        }
        Ok(FolderSource {
            root: root.to_path_buf(),
            classes,
            files,
            color,
            order: OrderPolicy::new(order),
        })
    }
}

/// Read and decode one image file, applying the channel-order rule for decoded images.
pub(crate) fn load_image(
    path: &Path,
    color: ColorMode,
    order: OrderPolicy,
) -> Result<super::Image> {
    let bytes = crate::fsio::read(path, "the image")?;
    let mut img = imgops::decode(&bytes, color, &path.display().to_string())?;
    order.decoded(&mut img);
    Ok(img)
}

impl Source for FolderSource {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn describe(&self) -> String {
        format!(
            "image folders {} ({} images, {} classes)",
            self.root.display(),
            self.files.len(),
            self.classes.len()
        )
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        check_index(index, self.files.len(), &self.root.display())?;
        let (path, label) = &self.files[index];
        Ok(Sample {
            image: load_image(path, self.color, self.order)?,
            label: Some(*label),
        })
    }
}
