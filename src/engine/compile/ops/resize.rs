//! Resize (nearest and linear). A resize is separable: Y = A_h · X · A_wᵀ per
//! channel, with constant 1-D interpolation matrices built here from the ONNX
//! rules, so its adjoint is gX = A_hᵀ · gY · A_w: two MatMuls with constants,
//! for every scale and coordinate mode alike.

use super::{Grads, OpRule, Out, UpgradeCx};
use crate::engine::compile::ctx::{Ctx, R, unsup};
use crate::onnx::{self, pb::NodeProto};

pub const RULES: &[OpRule] = &[OpRule::upgraded("Resize", upgrade, resize)];

/// Opset 10's Resize(X, scales) is asymmetric, and its nearest mode floors.
fn upgrade(u: &mut UpgradeCx, n: &mut NodeProto) -> R<()> {
    if u.from >= 11 {
        return Ok(());
    }
    let scales = n.input.get(1).cloned().unwrap_or_default();
    n.input.truncate(1);
    n.input.push(String::new());
    n.input.push(scales);
    n.attribute.retain(|a| a.name == "mode");
    n.attribute.push(onnx::attr_string(
        "coordinate_transformation_mode",
        "asymmetric",
    ));
    n.attribute.push(onnx::attr_string("nearest_mode", "floor"));
    Ok(())
}

/// How an output coordinate maps back to the input.
#[derive(Clone, Copy)]
enum Coord {
    HalfPixel,
    PytorchHalfPixel,
    Asymmetric,
    AlignCorners,
    TfHalfPixelForNn,
}

#[derive(Clone, Copy)]
enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

#[derive(Clone, Copy)]
enum Kind {
    Nearest(Nearest),
    Linear,
}

/// The (out × in) matrix of one axis: row o holds the weights output o takes from each input.
fn matrix(inp: usize, out: usize, scale: f64, coord: Coord, kind: Kind) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    let last = (inp - 1) as f64;
    for o in 0..out {
        let of = o as f64;
        let x = match coord {
            Coord::HalfPixel => (of + 0.5) / scale - 0.5,
            Coord::PytorchHalfPixel if out > 1 => (of + 0.5) / scale - 0.5,
            Coord::PytorchHalfPixel => 0.0,
            Coord::Asymmetric => of / scale,
            Coord::AlignCorners if out > 1 => of * last / (out - 1) as f64,
            Coord::AlignCorners => 0.0,
            Coord::TfHalfPixelForNn => (of + 0.5) / scale,
        };
        match kind {
            Kind::Nearest(nm) => {
                let frac = x - x.floor();
                let i = match nm {
                    Nearest::Floor => x.floor(),
                    Nearest::Ceil => x.ceil(),
                    Nearest::RoundPreferFloor if frac == 0.5 => x.floor(),
                    Nearest::RoundPreferCeil if frac == 0.5 => x.ceil(),
                    _ => x.round(),
                };
                let i = i.clamp(0.0, last) as usize;
                m[o * inp + i] = 1.0;
            }
            Kind::Linear => {
                let x = x.clamp(0.0, last);
                let x0 = x.floor() as usize;
                let x1 = (x0 + 1).min(inp - 1);
                let w1 = (x - x0 as f64) as f32;
                m[o * inp + x0] += 1.0 - w1;
                m[o * inp + x1] += w1;
            }
        }
    }
    m
}

fn resize(cx: &mut Ctx, n: &NodeProto, g: &Grads, on_path: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let x = n.input[0].clone();
    for i in 1..n.input.len() {
        if !n.input[i].is_empty() && on_path(&n.input[i]) {
            return Err(unsup(n, "its scales or sizes depend on the input"));
        }
    }
    let xs = cx.shape(&x)?;
    let ys = cx.shape(&n.output[0])?;
    if xs.len() != 4 || xs[..2] != ys[..2] {
        return Err(unsup(
            n,
            format!("only spatial resizes of N×C×H×W are supported ({xs:?} → {ys:?})"),
        ));
    }
    let kind = match onnx::get_string(n, "mode").as_deref().unwrap_or("nearest") {
        "nearest" => Kind::Nearest(
            match onnx::get_string(n, "nearest_mode")
                .as_deref()
                .unwrap_or("round_prefer_floor")
            {
                "round_prefer_floor" => Nearest::RoundPreferFloor,
                "round_prefer_ceil" => Nearest::RoundPreferCeil,
                "floor" => Nearest::Floor,
                "ceil" => Nearest::Ceil,
                o => return Err(unsup(n, format!("nearest_mode={o}"))),
            },
        ),
        "linear" => Kind::Linear,
        o => {
            return Err(unsup(
                n,
                format!("mode={o} (nearest and linear are supported)"),
            ));
        }
    };
    let coord = match onnx::get_string(n, "coordinate_transformation_mode")
        .as_deref()
        .unwrap_or("half_pixel")
    {
        "half_pixel" => Coord::HalfPixel,
        "pytorch_half_pixel" => Coord::PytorchHalfPixel,
        "asymmetric" => Coord::Asymmetric,
        "align_corners" => Coord::AlignCorners,
        "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
        o => return Err(unsup(n, format!("coordinate_transformation_mode={o}"))),
    };
    if onnx::get_int(n, "antialias").unwrap_or(0) != 0 && (ys[2] < xs[2] || ys[3] < xs[3]) {
        return Err(unsup(n, "antialiased downscaling"));
    }
    // The scales the op uses: given ones, else out/in.
    let given = n
        .input
        .get(2)
        .filter(|t| !t.is_empty())
        .and_then(|t| cx.const_f32(t))
        .map(|(_, v)| v)
        .filter(|v| v.len() == 4);
    let scale = |a: usize| -> f64 {
        match &given {
            Some(v) => v[a] as f64,
            None => ys[a] as f64 / xs[a] as f64,
        }
    };
    let mut cur = gy.to_string();
    if ys[3] != xs[3] || !matches!(coord, Coord::Asymmetric | Coord::HalfPixel) || scale(3) != 1.0 {
        let m = matrix(xs[3], ys[3], scale(3), coord, kind);
        let t = cx.cf32("resize_w", &[ys[3], xs[3]], m);
        cur = cx.op("MatMul", &[&cur, &t], vec![]);
    }
    if ys[2] != xs[2] || !matches!(coord, Coord::Asymmetric | Coord::HalfPixel) || scale(2) != 1.0 {
        let m = matrix(xs[2], ys[2], scale(2), coord, kind);
        let mut mt = vec![0f32; m.len()];
        for o in 0..ys[2] {
            for i in 0..xs[2] {
                mt[i * ys[2] + o] = m[o * xs[2] + i];
            }
        }
        let t = cx.cf32("resize_hT", &[xs[2], ys[2]], mt);
        cur = cx.op("MatMul", &[&t, &cur], vec![]);
    }
    Ok(vec![(x, cur)])
}
