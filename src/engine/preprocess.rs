//! Image → model input tensor, and input gradients back to pixel space.
//!
//! Pixels are RGB, 0–255 floats, H×W×3 (what cameras and attacks work in).
//! The model sees `(pixel − mean[c]) / std[c]` in its own channel order, N×C×H×W.

use ndarray::{Array3, Array4, ArrayView3, ArrayView4};
use serde::Deserialize;
use std::path::Path;

/// Channel order the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (Caffe models).
    Bgr,
}

/// How a photo is fitted to the square model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Resize the shorter side to `resize_to`, then centre-crop (ImageNet evaluation).
    ShortSideCrop,
    /// Stretch to the input size (what video sources do in GStreamer: the whole scene stays visible).
    Squash,
}

/// Preprocessing parameters from a model manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Square input size in pixels (224).
    pub size: u32,
    /// Channel order of the model input.
    pub channels: ChannelOrder,
    /// Per-channel mean in pixel units, in the model's channel order.
    pub mean: [f32; 3],
    /// Per-channel divisor, in the model's channel order.
    pub std: [f32; 3],
    /// How photos are fitted to the input.
    #[serde(default = "default_resize")]
    pub resize: Resize,
    /// Shorter-side length before the centre crop, for `short-side-crop`.
    #[serde(default = "default_resize_to")]
    pub resize_to: u32,
}

fn default_resize() -> Resize {
    Resize::ShortSideCrop
}
fn default_resize_to() -> u32 {
    256
}

/// Errors while reading or converting an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or decoded.
    #[error("{path}: not a readable image: {msg}")]
    Decode { path: String, msg: String },
    /// The pixel buffer has the wrong size.
    #[error("frame is {got_w}×{got_h}, the model needs {want}×{want}")]
    Size { got_w: u32, got_h: u32, want: u32 },
}

impl Preprocess {
    /// Index into pixel RGB for model channel `c`.
    fn rgb_index(&self, c: usize) -> usize {
        match self.channels {
            ChannelOrder::Rgb => c,
            ChannelOrder::Bgr => 2 - c,
        }
    }

    /// Loads a photo and fits it to the model input (size × size RGB8).
    pub fn load_image(&self, path: &Path) -> Result<image::RgbImage, ImageError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ImageError::Decode {
            path: origin.clone(),
            msg: e.to_string(),
        })?;
        self.decode_image(&bytes, &origin)
    }

    /// Decodes photo bytes (format guessed from the content; `origin` names them in errors)
    /// and fits them to the model input. The decoder's default memory limit applies.
    pub fn decode_image(&self, bytes: &[u8], origin: &str) -> Result<image::RgbImage, ImageError> {
        let err = |e: image::ImageError| ImageError::Decode {
            path: origin.to_string(),
            msg: e.to_string(),
        };
        let img = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| err(e.into()))?
            .decode()
            .map_err(err)?;
        Ok(self.fit(&img.to_rgb8()))
    }

    /// Fits an RGB image of any size to the model input.
    pub fn fit(&self, img: &image::RgbImage) -> image::RgbImage {
        use image::imageops::{FilterType, crop_imm, resize};
        let s = self.size;
        let (w, h) = img.dimensions();
        if (w, h) == (s, s) {
            return img.clone();
        }
        match self.resize {
            Resize::Squash => resize(img, s, s, FilterType::Triangle),
            Resize::ShortSideCrop => {
                let short = w.min(h);
                // ILSVRC val sets are often shipped pre-squashed to 227×227: those are
                // centre-cropped as they are, since resizing them again would zoom in twice.
                let scaled = if short >= s && short * 10 <= s * 11 {
                    img.clone()
                } else {
                    // torchvision's Resize(256): the long side is truncated, not rounded.
                    // Bicubic: on the 500 dev photos SqueezeNet reaches 0.604 top-1 with it,
                    // 0.594 bilinear, 0.602 Lanczos (ORT, this crate's resize): within noise.
                    let r = self.resize_to as u64;
                    let (nw, nh) = if w <= h {
                        (r, r * h as u64 / w as u64)
                    } else {
                        (r * w as u64 / h as u64, r)
                    };
                    resize(
                        img,
                        (nw as u32).max(s),
                        (nh as u32).max(s),
                        FilterType::CatmullRom,
                    )
                };
                let (sw, sh) = scaled.dimensions();
                // Centre offsets rounded half-up, as torchvision's CenterCrop.
                crop_imm(&scaled, (sw - s).div_ceil(2), (sh - s).div_ceil(2), s, s).to_image()
            }
        }
    }

    /// RGB8 image (size × size) → H×W×3 float pixels.
    pub fn pixels(img: &image::RgbImage) -> Array3<f32> {
        let (w, h) = img.dimensions();
        Array3::from_shape_fn((h as usize, w as usize, 3), |(y, x, c)| {
            img.get_pixel(x as u32, y as u32)[c] as f32
        })
    }

    /// Tightly packed RGB8 buffer → model tensor; the frame must already be size × size.
    pub fn tensor_from_rgb8(&self, rgb: &[u8], w: u32, h: u32) -> Result<Array4<f32>, ImageError> {
        let s = self.size;
        if w != s || h != s || rgb.len() != (s * s * 3) as usize {
            return Err(ImageError::Size {
                got_w: w,
                got_h: h,
                want: s,
            });
        }
        let n = s as usize;
        let mut t = Array4::<f32>::zeros((1, 3, n, n));
        for c in 0..3 {
            let src = self.rgb_index(c);
            let (m, sd) = (self.mean[c], self.std[c]);
            let mut plane = t.slice_mut(ndarray::s![0, c, .., ..]);
            for (i, v) in plane.iter_mut().enumerate() {
                *v = (rgb[i * 3 + src] as f32 - m) / sd;
            }
        }
        Ok(t)
    }

    /// H×W×3 float pixels (0–255, RGB) → model tensor N×C×H×W.
    pub fn tensor(&self, px: ArrayView3<f32>) -> Array4<f32> {
        let (h, w, _) = px.dim();
        Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| {
            (px[[y, x, self.rgb_index(c)]] - self.mean[c]) / self.std[c]
        })
    }

    /// Gradient w.r.t. the model tensor → gradient w.r.t. RGB pixels (chain rule through 1/std).
    pub fn grad_to_pixels(&self, g: ArrayView4<f32>) -> Array3<f32> {
        let (_, _, h, w) = g.dim();
        let mut out = Array3::<f32>::zeros((h, w, 3));
        for c in 0..3 {
            let dst = self.rgb_index(c);
            for y in 0..h {
                for x in 0..w {
                    out[[y, x, dst]] = g[[0, c, y, x]] / self.std[c];
                }
            }
        }
        out
    }

    /// A response N×C×H×W in model-channel order → C×H×W in RGB order.
    pub fn response_to_rgb(&self, r: ArrayView3<f32>) -> Array3<f32> {
        let mut out = r.to_owned();
        if self.channels == ChannelOrder::Bgr {
            out.invert_axis(ndarray::Axis(0));
        }
        out
    }
}
