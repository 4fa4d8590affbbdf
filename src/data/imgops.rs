//! Image-file decoding, colour conversion and resizing, written to follow what Caffe's OpenCV
//! calls do (so a model sees the pixels it was trained on). Decoded images come back **RGB**;
//! the caller applies the channel-order rule ([`super::OrderPolicy::decoded`]).

use super::{ColorMode, Image, Pixels};
use anyhow::{anyhow, ensure, Result};

/// Decode a PNG/JPEG/BMP held in memory into an RGB (or gray) CHW u8 image.
/// `what` names the image in errors.
pub fn decode(bytes: &[u8], color: ColorMode, what: &str) -> Result<Image> {
    let img = image::load_from_memory(bytes).map_err(|e| {
        anyhow!("{what}: cannot decode the image ({e}); expected a PNG, JPEG or BMP file")
    })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let native_gray = !img.color().has_color();
    let gray = match color {
        ColorMode::Gray => true,
        ColorMode::Color => false,
        ColorMode::Native => native_gray,
    };
    if gray {
        let luma = if native_gray {
            img.to_luma8().into_raw()
        } else {
            rgb_to_gray(&img.to_rgb8().into_raw())
        };
        Ok(Image {
            channels: 1,
            height: h,
            width: w,
            pixels: Pixels::U8(luma),
        })
    } else {
        Ok(Image::from_hwc_u8(h, w, 3, &img.to_rgb8().into_raw()))
    }
}

/// RGB (HWC) → gray with OpenCV's fixed-point BT.601 weights (`cvtColor(..., COLOR_*2GRAY)`:
/// `(R·4899 + G·9617 + B·1868 + 2^13) >> 14`).
pub fn rgb_to_gray(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| {
            ((p[0] as u32 * 4899 + p[1] as u32 * 9617 + p[2] as u32 * 1868 + (1 << 13)) >> 14) as u8
        })
        .collect()
}

/// Resize a u8 CHW image to `new_h × new_w` as OpenCV's `cv::resize(..., INTER_LINEAR)` does on
/// 8-bit data (Caffe's `ReadImageToCVMat` with new_height/new_width): half-pixel centres,
/// coordinates clamped at the borders, 11-bit fixed-point weights, `(Σ + 2^21) >> 22`; an exact
/// 2× shrink becomes OpenCV's area average `(a+b+c+d+2) >> 2`. This is OpenCV's scalar path;
/// its SIMD builds are documented to agree, but nnquant has not checked every build.
pub fn resize_bilinear(img: &Image, new_h: usize, new_w: usize) -> Result<Image> {
    let Pixels::U8(src) = &img.pixels else {
        return Err(anyhow!("resizing float images is not supported"));
    };
    ensure!(
        new_h > 0 && new_w > 0,
        "resize to {new_h}×{new_w}: sizes must be positive"
    );
    let (c, h, w) = (img.channels, img.height, img.width);
    if (h, w) == (new_h, new_w) {
        return Ok(img.clone());
    }
    let mut out = vec![0u8; c * new_h * new_w];
    if h == 2 * new_h && w == 2 * new_w {
        for ch in 0..c {
            let s = &src[ch * h * w..];
            for y in 0..new_h {
                for x in 0..new_w {
                    let (r0, r1) = (2 * y * w, (2 * y + 1) * w);
                    let sum = s[r0 + 2 * x] as u32
                        + s[r0 + 2 * x + 1] as u32
                        + s[r1 + 2 * x] as u32
                        + s[r1 + 2 * x + 1] as u32;
                    out[(ch * new_h + y) * new_w + x] = ((sum + 2) >> 2) as u8;
                }
            }
        }
    } else {
        let xs = coeffs(w, new_w);
        let ys = coeffs(h, new_h);
        let mut row0 = vec![0i32; new_w];
        let mut row1 = vec![0i32; new_w];
        for ch in 0..c {
            let s = &src[ch * h * w..(ch + 1) * h * w];
            let hresize = |y: usize, row: &mut [i32]| {
                let line = &s[y * w..(y + 1) * w];
                for (dst, &(sx, a0, a1)) in row.iter_mut().zip(&xs) {
                    let next = (sx + 1).min(w - 1);
                    *dst = line[sx] as i32 * a0 + line[next] as i32 * a1;
                }
            };
            for (dy, &(sy, b0, b1)) in ys.iter().enumerate() {
                hresize(sy, &mut row0);
                hresize((sy + 1).min(h - 1), &mut row1);
                for dx in 0..new_w {
                    let v = (row0[dx] * b0 + row1[dx] * b1 + (1 << 21)) >> 22;
                    out[(ch * new_h + dy) * new_w + dx] = v.clamp(0, 255) as u8;
                }
            }
        }
    }
    Ok(Image {
        channels: c,
        height: new_h,
        width: new_w,
        pixels: Pixels::U8(out),
    })
}

/// Source index and the two 11-bit weights for each destination coordinate.
fn coeffs(src: usize, dst: usize) -> Vec<(usize, i32, i32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut frac = f - s as f32;
            if s < 0 {
                s = 0;
                frac = 0.0;
            }
            if s >= src as i64 - 1 {
                s = src as i64 - 1;
                frac = 0.0;
            }
            let a0 = ((1.0 - frac) * 2048.0).round() as i32;
            (s as usize, a0, 2048 - a0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(h: usize, w: usize, v: Vec<u8>) -> Image {
        Image {
            channels: 1,
            height: h,
            width: w,
            pixels: Pixels::U8(v),
        }
    }

    #[test]
    fn resize_upscale_2x_matches_opencv() {
        // cv2.resize(np.array([[0, 100]], np.uint8), (4, 1)) == [[0, 25, 75, 100]]
        let r = resize_bilinear(&gray(1, 2, vec![0, 100]), 1, 4).unwrap();
        assert_eq!(r.as_u8().unwrap(), &[0, 25, 75, 100]);
    }

    #[test]
    fn resize_exact_half_is_area_average() {
        let r = resize_bilinear(&gray(2, 2, vec![1, 2, 3, 5]), 1, 1).unwrap();
        assert_eq!(r.as_u8().unwrap(), &[3]); // (11 + 2) >> 2
    }

    #[test]
    fn gray_weights_are_opencv_bt601() {
        assert_eq!(
            rgb_to_gray(&[255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255]),
            vec![255, 76, 150, 29]
        );
    }
}
