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

/// RGB (HWC) → gray with OpenCV's fixed-point BT.601 weights (`cvtColor(..., COLOR_RGB2GRAY)`:
/// `(R·9798 + G·19235 + B·3735 + 2^14) >> 15`; checked equal to OpenCV 5.0 on 2,500 random
/// pixels). OpenCV's `imread(..., IMREAD_GRAYSCALE)` lets libpng/libjpeg convert instead, which
/// can differ by one level.
pub fn rgb_to_gray(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| {
            ((p[0] as u32 * 9798 + p[1] as u32 * 19235 + p[2] as u32 * 3735 + (1 << 14)) >> 15)
                as u8
        })
        .collect()
}

/// Resize a u8 CHW image to `new_h × new_w` as OpenCV's `cv::resize(..., INTER_LINEAR)` does on
/// 8-bit data (Caffe's `ReadImageToCVMat` with new_height/new_width): half-pixel centres,
/// coordinates clamped at the borders, 11-bit fixed-point weights, a horizontal pass in exact
/// integers, then OpenCV's vectorised vertical pass
/// `((r0>>4)·b0 >> 16) + ((r1>>4)·b1 >> 16) + 2) >> 2` (its scalar fallback
/// `(r0·b0 + r1·b1 + 2^21) >> 22` rounds differently and is not what x86 builds run); an exact
/// 2× shrink becomes OpenCV's area average `(a+b+c+d+2) >> 2`.
///
/// Checked against OpenCV 5.0 (the `opencv-python-headless` wheel) on random images: identical
/// on every downscale tried (32→24, 47×33→28, 13×7→9×5, 10→3, 2× shrink, 1-3 channels); on
/// upscales (11×17→30×40, 3→7×256) 0.2-2.5 % of pixels come out one level higher. Caffe builds use
/// older OpenCVs, so treat resized inputs as close to, not bit-equal with, a given Caffe build.
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
                    let v =
                        ((((row0[dx] >> 4) * b0) >> 16) + (((row1[dx] >> 4) * b1) >> 16) + 2) >> 2;
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

    /// Reference from OpenCV 5.0: `cv2.resize(a, (9, 5), interpolation=cv2.INTER_LINEAR)` of
    /// a random 7×13 uint8 image.
    #[test]
    fn resize_downscale_matches_opencv_reference() {
        let a: Vec<u8> = vec![
            255, 228, 34, 121, 243, 189, 6, 131, 102, 168, 82, 193, 187, 150, 81, 243, 205, 24,
            236, 8, 246, 164, 231, 36, 210, 111, 172, 210, 174, 176, 218, 242, 169, 114, 205, 63,
            160, 47, 212, 79, 72, 112, 120, 222, 69, 31, 95, 108, 36, 109, 238, 69, 51, 81, 228,
            211, 202, 58, 202, 65, 76, 70, 193, 104, 42, 250, 209, 164, 2, 44, 178, 140, 98, 2,
            243, 21, 50, 29, 14, 7, 53, 50, 151, 221, 46, 60, 230, 192, 164, 156, 127,
        ];
        let cv: Vec<u8> = vec![
            226, 117, 145, 199, 6, 136, 173, 114, 177, 162, 187, 182, 195, 104, 176, 137, 111, 158,
            77, 99, 131, 137, 31, 101, 44, 152, 107, 131, 179, 129, 120, 177, 64, 129, 110, 47, 58,
            66, 50, 175, 65, 119, 200, 135, 113,
        ];
        let r = resize_bilinear(&gray(7, 13, a), 5, 9).unwrap();
        assert_eq!(r.as_u8().unwrap(), cv.as_slice());
    }

    /// Reference from OpenCV 5.0 `cv2.cvtColor(.., cv2.COLOR_RGB2GRAY)`; the first three pixels
    /// are ones where 14-bit weights would be off by one.
    #[test]
    fn gray_weights_are_opencv_bt601() {
        let rgb = [
            184, 13, 218, 154, 166, 158, 105, 182, 248, 255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0,
            255,
        ];
        assert_eq!(rgb_to_gray(&rgb), vec![87, 162, 166, 255, 76, 150, 29]);
    }
}
