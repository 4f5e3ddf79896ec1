//! Tests of the guard-graph compiler and the ONNX IR helpers.
//!
//! - random builder networks covering every supported op: plain mode against
//!   finite differences, guided and plain against a direct f64 reference;
//! - the three shared models: compile, run on tract, logits equal the original;
//! - errors: unsupported ops, corrupt bytes; FP16 loading.

#[path = "common/onnx_ref.rs"]
mod onnx_ref;

use advguard::engine::compile::{
    CompileError, CompileOptions, Mode, Seed, TENSORRT_SAFE_OPS, compile,
};
use advguard::engine::{LOGITS, RESPONSE, SEED};
use advguard::onnx::{
    self, GraphBuilder, OnnxError, attr_float, attr_int, attr_ints, pb::ModelProto,
};
use onnx_ref::{Ref, T};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use tract_onnx::prelude::*;

// ---------------------------------------------------------------- helpers

type Runnable = std::sync::Arc<TypedRunnableModel>;

fn runnable(m: &ModelProto) -> Runnable {
    tract_onnx::onnx()
        .model_for_proto_model(m)
        .expect("tract loads the model")
        .into_optimized()
        .expect("tract optimises the model")
        .into_runnable()
        .expect("tract makes it runnable")
}

fn run(r: &Runnable, inputs: Vec<(Vec<usize>, Vec<f32>)>) -> Vec<(Vec<usize>, Vec<f32>)> {
    let tv: TVec<TValue> = inputs
        .into_iter()
        .map(|(s, d)| Tensor::from_shape(&s, &d).unwrap().into())
        .collect();
    let out = r.run(tv).expect("tract runs the model");
    out.iter()
        .map(|t| {
            let v = t.to_plain_array_view::<f32>().unwrap();
            (v.shape().to_vec(), v.iter().copied().collect())
        })
        .collect()
}

fn output_index(m: &ModelProto, name: &str) -> usize {
    m.graph
        .as_ref()
        .unwrap()
        .output
        .iter()
        .position(|o| o.name == name)
        .expect("output exists")
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-1.0..1.0f32) * scale)
        .collect()
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

fn data_dir() -> PathBuf {
    advguard::data_dir()
}

/// He-like random weights, so activations stay O(1).
fn conv_w(b: &mut GraphBuilder, rng: &mut StdRng, m: usize, cg: usize, k: usize) -> String {
    let fan = (cg * k * k) as f32;
    let w = rand_vec(rng, m * cg * k * k, (3.0 / fan).sqrt());
    b.init_f32("w", &[m, cg, k, k], w)
}

fn conv_b(b: &mut GraphBuilder, rng: &mut StdRng, m: usize) -> String {
    let v = rand_vec(rng, m, 0.1);
    b.init_f32("b", &[m], v)
}

struct Net {
    model: ModelProto,
    input: Vec<usize>,
    /// Tensor the LastConv seed should pick.
    last_conv: String,
}

/// Fire-module network: Conv s1 pad, Relu, overlapping MaxPool 3×3/2 ceil, squeeze/expand,
/// Concat, Dropout, 1×1 classifier Conv, Relu, GlobalAveragePool, Flatten, Softmax.
fn net_fire(rng: &mut StdRng) -> Net {
    let mut b = GraphBuilder::new(13);
    let x = b.input("image", &[1, 3, 17, 17]);
    let w = conv_w(&mut b, rng, 8, 3, 3);
    let bb = conv_b(&mut b, rng, 8);
    let c1 = b.node(
        "Conv",
        &[&x, &w, &bb],
        vec![
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_ints("kernel_shape", &[3, 3]),
        ],
    );
    let r1 = b.node("Relu", &[&c1], vec![]);
    let p1 = b.node(
        "MaxPool",
        &[&r1],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_int("ceil_mode", 1),
        ],
    );
    let w = conv_w(&mut b, rng, 4, 8, 1);
    let s = b.node("Conv", &[&p1, &w], vec![]);
    let s = b.node("Relu", &[&s], vec![]);
    let w = conv_w(&mut b, rng, 6, 4, 1);
    let bb = conv_b(&mut b, rng, 6);
    let e1 = b.node("Conv", &[&s, &w, &bb], vec![]);
    let e1 = b.node("Relu", &[&e1], vec![]);
    let w = conv_w(&mut b, rng, 6, 4, 3);
    let bb = conv_b(&mut b, rng, 6);
    let e3 = b.node(
        "Conv",
        &[&s, &w, &bb],
        vec![attr_ints("pads", &[1, 1, 1, 1])],
    );
    let e3 = b.node("Relu", &[&e3], vec![]);
    let cat = b.node("Concat", &[&e1, &e3], vec![attr_int("axis", 1)]);
    let p2 = b.node(
        "MaxPool",
        &[&cat],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let d = b.node("Dropout", &[&p2], vec![]);
    let w = conv_w(&mut b, rng, 10, 12, 1);
    let bb = conv_b(&mut b, rng, 10);
    let c10 = b.node("Conv", &[&d, &w, &bb], vec![]);
    let r10 = b.node("Relu", &[&c10], vec![]);
    let gap = b.node("GlobalAveragePool", &[&r10], vec![]);
    let f = b.node("Flatten", &[&gap], vec![attr_int("axis", 1)]);
    let sm = b.node("Softmax", &[&f], vec![attr_int("axis", 1)]);
    b.output(&sm, Some(&[1, 10]));
    Net {
        model: b.build(),
        input: vec![1, 3, 17, 17],
        last_conv: r10,
    }
}

/// Mobile-like network: preprocessing Sub/Div, strided Conv with asymmetric pads, BatchNorm,
/// Clip (ReLU6), depthwise Conv, residual Add, dilated grouped Conv, AveragePool (pads,
/// count_include_pad=0), broadcast Add from a GlobalAveragePool branch, Mul by a constant,
/// Reshape, Gemm (transB), Relu, MatMul, Add bias.
fn net_mobile(rng: &mut StdRng) -> Net {
    let mut b = GraphBuilder::new(13);
    let x = b.input("input", &[1, 3, 16, 15]);
    let mean = b.init_f32("mean", &[1, 3, 1, 1], vec![0.1, -0.2, 0.05]);
    let std = b.init_f32("std", &[1, 3, 1, 1], vec![0.5, 0.8, 1.2]);
    let x0 = b.node("Sub", &[&x, &mean], vec![]);
    let x0 = b.node("Div", &[&x0, &std], vec![]);
    let w = conv_w(&mut b, rng, 8, 3, 3);
    let c1 = b.node(
        "Conv",
        &[&x0, &w],
        vec![
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[0, 0, 1, 1]),
        ],
    );
    let gamma = rand_vec(rng, 8, 0.5).into_iter().map(|v| v + 1.0).collect();
    let gamma = b.init_f32("gamma", &[8], gamma);
    let beta = rand_vec(rng, 8, 0.3);
    let beta = b.init_f32("beta", &[8], beta);
    let mu = rand_vec(rng, 8, 0.2);
    let mu = b.init_f32("mu", &[8], mu);
    let var = rand_vec(rng, 8, 0.3).into_iter().map(|v| v + 1.0).collect();
    let var = b.init_f32("var", &[8], var);
    let bn = b.node(
        "BatchNormalization",
        &[&c1, &gamma, &beta, &mu, &var],
        vec![attr_float("epsilon", 1e-3)],
    );
    let lo = b.scalar_f32("lo", 0.0);
    let hi = b.scalar_f32("hi", 6.0);
    let a1 = b.node("Clip", &[&bn, &lo, &hi], vec![]);
    let w = conv_w(&mut b, rng, 8, 1, 3);
    let dw = b.node(
        "Conv",
        &[&a1, &w],
        vec![attr_int("group", 8), attr_ints("pads", &[1, 1, 1, 1])],
    );
    let dw = b.node("Clip", &[&dw, &lo, &hi], vec![]);
    let w = conv_w(&mut b, rng, 8, 8, 1);
    let pw = b.node("Conv", &[&dw, &w], vec![]);
    let res = b.node("Add", &[&pw, &a1], vec![]);
    let w = conv_w(&mut b, rng, 8, 4, 3);
    let bb = conv_b(&mut b, rng, 8);
    let dil = b.node(
        "Conv",
        &[&res, &w, &bb],
        vec![
            attr_int("group", 2),
            attr_ints("dilations", &[2, 2]),
            attr_ints("pads", &[2, 1, 2, 3]),
        ],
    );
    let dil = b.node("Relu", &[&dil], vec![]);
    let ap = b.node(
        "AveragePool",
        &[&dil],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let gp = b.node("GlobalAveragePool", &[&ap], vec![]);
    let badd = b.node("Add", &[&ap, &gp], vec![]);
    let k = b.init_f32("k", &[1], vec![0.7]);
    let scaled = b.node("Mul", &[&badd, &k], vec![]);
    // ap: 8×4×4 → 128
    let shape = b.init_i64("shape", &[2], vec![1, -1]);
    let flat = b.node("Reshape", &[&scaled, &shape], vec![]);
    let wg = rand_vec(rng, 16 * 128, (3.0f32 / 128.0).sqrt());
    let wg = b.init_f32("wg", &[16, 128], wg);
    let bg = rand_vec(rng, 16, 0.1);
    let bg = b.init_f32("bg", &[16], bg);
    let h = b.node(
        "Gemm",
        &[&flat, &wg, &bg],
        vec![attr_int("transB", 1), attr_float("alpha", 0.9)],
    );
    let h = b.node("Relu", &[&h], vec![]);
    let wm = rand_vec(rng, 16 * 7, (3.0f32 / 16.0).sqrt());
    let wm = b.init_f32("wm", &[16, 7], wm);
    let mm = b.node("MatMul", &[&h, &wm], vec![]);
    let bias = rand_vec(rng, 7, 0.1);
    let bias = b.init_f32("bias", &[7], bias);
    let out = b.node("Add", &[&mm, &bias], vec![]);
    b.output(&out, Some(&[1, 7]));
    Net {
        model: b.build(),
        input: vec![1, 3, 16, 15],
        last_conv: dil,
    }
}

/// Strided Conv with a 4×4 kernel and asymmetric pads, stride-3 Conv, MaxPool with
/// pads and ceil_mode, AveragePool with count_include_pad=1 and ceil_mode, Gemm
/// without transB, Softmax at the end.
fn net_strided(rng: &mut StdRng) -> Net {
    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &[1, 2, 19, 18]);
    let w = conv_w(&mut b, rng, 6, 2, 4);
    let c1 = b.node(
        "Conv",
        &[&x, &w],
        vec![
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 2, 0, 1]),
        ],
    );
    let r1 = b.node("Relu", &[&c1], vec![]);
    let mp = b.node(
        "MaxPool",
        &[&r1],
        vec![
            attr_ints("kernel_shape", &[3, 2]),
            attr_ints("strides", &[2, 1]),
            attr_ints("pads", &[1, 0, 1, 1]),
            attr_int("ceil_mode", 1),
        ],
    );
    let w = conv_w(&mut b, rng, 6, 3, 2);
    let c2 = b.node(
        "Conv",
        &[&mp, &w],
        vec![
            attr_ints("strides", &[3, 2]),
            attr_int("group", 2),
            attr_ints("pads", &[1, 0, 0, 1]),
        ],
    );
    let r2 = b.node("Relu", &[&c2], vec![]);
    let ap = b.node(
        "AveragePool",
        &[&r2],
        vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 0, 0]),
            attr_int("count_include_pad", 1),
            attr_int("ceil_mode", 1),
        ],
    );
    let f = b.node("Flatten", &[&ap], vec![]);
    Net {
        model: finish_gemm(b, rng, &f, &[1, 6, 2, 3]),
        input: vec![1, 2, 19, 18],
        last_conv: r2,
    }
}

fn finish_gemm(mut b: GraphBuilder, rng: &mut StdRng, f: &str, fshape: &[usize]) -> ModelProto {
    let k: usize = fshape.iter().product();
    let w = rand_vec(rng, k * 5, (3.0 / k as f32).sqrt());
    let w = b.init_f32("wg", &[k, 5], w);
    let g = b.node("Gemm", &[f, &w], vec![]);
    let sm = b.node("Softmax", &[&g], vec![attr_int("axis", -1)]);
    b.output(&sm, Some(&[1, 5]));
    b.build()
}

/// The compiled graph's response for an input (and optional seed).
fn guard_response(
    guard: &ModelProto,
    x: &[f32],
    shape: &[usize],
    seed: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let r = runnable(guard);
    let mut inputs = vec![(shape.to_vec(), x.to_vec())];
    if let Some(s) = seed {
        inputs.push((vec![1, s.len()], s.to_vec()));
    }
    let out = run(&r, inputs);
    let resp = out[output_index(guard, RESPONSE)].clone();
    assert_eq!(resp.0, shape, "response has the input's shape");
    let logits = out[output_index(guard, LOGITS)].1.clone();
    (logits, resp.1)
}

fn pre_softmax(m: &ModelProto) -> String {
    let g = m.graph.as_ref().unwrap();
    let out = &g.output[0].name;
    let n = g.node.iter().find(|n| n.output.contains(out)).unwrap();
    if n.op_type == "Softmax" {
        n.input[0].clone()
    } else {
        out.clone()
    }
}

/// Checks one network against the reference in both modes and both seed kinds.
fn check_against_reference(net: &Net, seed_rng: u64, quantise: bool) {
    let mut rng = StdRng::seed_from_u64(seed_rng);
    let n: usize = net.input.iter().product();
    let x: Vec<f32> = if quantise {
        (0..n)
            .map(|_| rng.random_range(0..4) as f32 * 0.5)
            .collect()
    } else {
        rand_vec(&mut rng, n, 1.0)
    };
    let xin = T::from_f32(&net.input, &x);
    let rf = Ref::new(&net.model);
    let input = onnx::real_inputs(&net.model)[0].name.clone();
    let vals = rf.forward(&input, &xin);
    let logit_t = pre_softmax(&net.model);
    let classes = vals[&logit_t].data.len();
    let seed: Vec<f32> = rand_vec(&mut rng, classes, 1.0);
    for mode in [Mode::Guided, Mode::Plain] {
        let guided = mode == Mode::Guided;
        // External seed at the logits.
        let guard = compile(
            &net.model,
            &CompileOptions {
                mode,
                seed: Seed::Input,
                input_shape: None,
            },
        )
        .unwrap();
        let (logits, resp) = guard_response(&guard, &x, &net.input, Some(&seed));
        let want_logits = &vals[&logit_t].data;
        assert!(
            rel_err(&logits, want_logits) < 1e-5,
            "logits differ from the reference"
        );
        let want = rf.backward(
            &vals,
            &input,
            &logit_t,
            T::from_f32(&[1, classes], &seed),
            guided,
        );
        assert!(
            want.data.iter().any(|&v| v != 0.0),
            "reference response is zero; test is void"
        );
        let e = rel_err(&resp, &want.data);
        assert!(e < 1e-4, "{mode} seed=input: relative error {e}");
        // LastConv seed: gradient of ½‖a‖² at the last conv's activation.
        let guard = compile(
            &net.model,
            &CompileOptions {
                mode,
                ..Default::default()
            },
        )
        .unwrap();
        let (_, resp) = guard_response(&guard, &x, &net.input, None);
        let a = vals[&net.last_conv].clone();
        let want = rf.backward(&vals, &input, &net.last_conv, a, guided);
        assert!(
            want.data.iter().any(|&v| v != 0.0),
            "reference response is zero; test is void"
        );
        let e = rel_err(&resp, &want.data);
        assert!(e < 1e-4, "{mode} seed=last-conv: relative error {e}");
    }
}

// ---------------------------------------------------------------- reference tests

#[test]
fn fire_network_matches_reference() {
    let mut rng = StdRng::seed_from_u64(2);
    let net = net_fire(&mut rng);
    check_against_reference(&net, 11, false);
}

#[test]
fn fire_network_with_maxpool_ties_matches_reference() {
    let mut rng = StdRng::seed_from_u64(2);
    let net = net_fire(&mut rng);
    check_against_reference(&net, 12, true);
}

#[test]
fn maxpool_ties_on_the_input_are_routed_to_every_maximum() {
    // Input → overlapping MaxPool 3×3/2 (ceil) directly, on quantised values: many ties.
    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &[1, 2, 9, 8]);
    let p = b.node(
        "MaxPool",
        &[&x],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_int("ceil_mode", 1),
        ],
    );
    let f = b.node("Flatten", &[&p], vec![]);
    b.output(&f, None);
    let model = b.build();
    let mut rng = StdRng::seed_from_u64(5);
    let xv: Vec<f32> = (0..144).map(|_| rng.random_range(0..3) as f32).collect();
    let guard = compile(
        &model,
        &CompileOptions {
            mode: Mode::Plain,
            seed: Seed::Input,
            input_shape: None,
        },
    )
    .unwrap();
    let rf = Ref::new(&model);
    let xin = T::from_f32(&[1, 2, 9, 8], &xv);
    let vals = rf.forward("x", &xin);
    let k = vals[&f].data.len();
    let seed: Vec<f32> = (0..k).map(|i| 1.0 + i as f32).collect();
    let (_, resp) = guard_response(&guard, &xv, &[1, 2, 9, 8], Some(&seed));
    let want = rf.backward(&vals, "x", &f, T::from_f32(&[1, k], &seed), false);
    let ties = want.data.iter().filter(|&&v| v != 0.0).count();
    assert!(
        ties > k,
        "the test needs tied maxima ({ties} routed positions, {k} windows)"
    );
    assert!(rel_err(&resp, &want.data) < 1e-6);
}

#[test]
fn mobile_network_matches_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    let net = net_mobile(&mut rng);
    check_against_reference(&net, 13, false);
}

#[test]
fn strided_network_matches_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    let net = net_strided(&mut rng);
    check_against_reference(&net, 14, false);
}

#[test]
fn top1_and_class_seeds_match_reference() {
    let mut rng = StdRng::seed_from_u64(6);
    let net = net_mobile(&mut rng);
    let n: usize = net.input.iter().product();
    let x = rand_vec(&mut rng, n, 1.0);
    let rf = Ref::new(&net.model);
    let vals = rf.forward("input", &T::from_f32(&net.input, &x));
    let lt = pre_softmax(&net.model);
    let l = &vals[&lt].data;
    let top = (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
    for (seed, cls) in [(Seed::Top1, top), (Seed::Class(3), 3)] {
        let guard = compile(
            &net.model,
            &CompileOptions {
                mode: Mode::Plain,
                seed,
                input_shape: None,
            },
        )
        .unwrap();
        let (_, resp) = guard_response(&guard, &x, &net.input, None);
        let mut oh = vec![0f32; l.len()];
        oh[cls] = 1.0;
        let want = rf.backward(&vals, "input", &lt, T::from_f32(&[1, l.len()], &oh), false);
        assert!(rel_err(&resp, &want.data) < 1e-4);
    }
}

// ---------------------------------------------------------------- finite differences

/// Plain mode equals central finite differences of ⟨seed, logits(x)⟩ along random
/// directions (f64 forward; fixed seeds; continuous inputs, so no ties).
fn check_finite_differences(net: &Net, seed_rng: u64) {
    let mut rng = StdRng::seed_from_u64(seed_rng);
    let n: usize = net.input.iter().product();
    let x = rand_vec(&mut rng, n, 1.0);
    let rf = Ref::new(&net.model);
    let input = onnx::real_inputs(&net.model)[0].name.clone();
    let lt = pre_softmax(&net.model);
    let classes = rf.forward(&input, &T::from_f32(&net.input, &x))[&lt]
        .data
        .len();
    let seed = rand_vec(&mut rng, classes, 1.0);
    let guard = compile(
        &net.model,
        &CompileOptions {
            mode: Mode::Plain,
            seed: Seed::Input,
            input_shape: None,
        },
    )
    .unwrap();
    let (_, resp) = guard_response(&guard, &x, &net.input, Some(&seed));
    let f = |xs: &[f64]| -> f64 {
        let v = rf.forward(&input, &T::new(net.input.clone(), xs.to_vec()));
        v[&lt]
            .data
            .iter()
            .zip(&seed)
            .map(|(a, &b)| a * b as f64)
            .sum()
    };
    let h = 1e-5;
    for _ in 0..4 {
        let d: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let xp: Vec<f64> = x.iter().zip(&d).map(|(&a, b)| a as f64 + h * b).collect();
        let xm: Vec<f64> = x.iter().zip(&d).map(|(&a, b)| a as f64 - h * b).collect();
        let fd = (f(&xp) - f(&xm)) / (2.0 * h);
        let an: f64 = resp.iter().zip(&d).map(|(&g, b)| g as f64 * b).sum();
        let gnorm: f64 = resp.iter().map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt();
        let dnorm: f64 = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        let err = (fd - an).abs() / (gnorm * dnorm);
        assert!(
            err < 1e-3,
            "finite differences {fd} vs response {an} (relative {err})"
        );
    }
}

#[test]
fn plain_mode_equals_finite_differences() {
    let mut rng = StdRng::seed_from_u64(21);
    check_finite_differences(&net_fire(&mut rng), 31);
    check_finite_differences(&net_mobile(&mut rng), 32);
    check_finite_differences(&net_strided(&mut rng), 33);
}

// ---------------------------------------------------------------- structure

#[test]
fn dead_branches_are_pruned() {
    // A branch off the input that does not reach the seed gets no adjoint.
    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &[1, 1, 6, 6]);
    let mut rng = StdRng::seed_from_u64(7);
    let w = conv_w(&mut b, &mut rng, 2, 1, 3);
    let c = b.node("Conv", &[&x, &w], vec![attr_ints("pads", &[1, 1, 1, 1])]);
    let r = b.node("Relu", &[&c], vec![]);
    let w2 = conv_w(&mut b, &mut rng, 2, 1, 3);
    let side = b.node("Conv", &[&x, &w2], vec![]);
    let side = b.node("Relu", &[&side], vec![]);
    let g = b.node("GlobalAveragePool", &[&r], vec![]);
    let f = b.node("Flatten", &[&g], vec![]);
    b.output(&f, None);
    b.output(&side, None);
    let model = b.build();
    let opts = CompileOptions {
        seed: Seed::Input,
        ..Default::default()
    };
    let guard = compile(&model, &opts).unwrap();
    let g = guard.graph.as_ref().unwrap();
    let convs = g
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" || n.op_type == "ConvTranspose")
        .count();
    assert_eq!(convs, 3, "two forward convs + one adjoint");
    let names: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec![f.as_str(), side.as_str(), LOGITS, RESPONSE]);
}

#[test]
fn unsupported_op_names_op_and_node() {
    for op in ["LRN", "Sin"] {
        let mut b = GraphBuilder::new(13);
        let x = b.input("x", &[1, 3, 8, 8]);
        let mut rng = StdRng::seed_from_u64(8);
        let w = conv_w(&mut b, &mut rng, 4, 3, 3);
        let c = b.node("Conv", &[&x, &w], vec![]);
        let attrs = if op == "LRN" {
            vec![attr_int("size", 3)]
        } else {
            vec![]
        };
        let l = b.node(op, &[&c], attrs);
        let node_name = b.nodes.last().unwrap().name.clone();
        let w = conv_w(&mut b, &mut rng, 4, 4, 3);
        let c2 = b.node("Conv", &[&l, &w], vec![]);
        let g = b.node("GlobalAveragePool", &[&c2], vec![]);
        let f = b.node("Flatten", &[&g], vec![]);
        b.output(&f, None);
        let err = compile(&b.build(), &CompileOptions::default()).unwrap_err();
        assert!(matches!(err, CompileError::UnsupportedOp { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("unsupported op \"{op}\"")), "{msg}");
        assert!(msg.contains(&format!("at node \"{node_name}\"")), "{msg}");
    }
}

#[test]
fn forward_only_ops_after_the_seed_are_fine() {
    // Sin after the last conv's activation: not on the backward path.
    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &[1, 3, 8, 8]);
    let mut rng = StdRng::seed_from_u64(9);
    let w = conv_w(&mut b, &mut rng, 4, 3, 3);
    let c = b.node("Conv", &[&x, &w], vec![]);
    let r = b.node("Relu", &[&c], vec![]);
    let s = b.node("Sin", &[&r], vec![]);
    let g = b.node("GlobalAveragePool", &[&s], vec![]);
    let f = b.node("Flatten", &[&g], vec![]);
    b.output(&f, None);
    let guard = compile(&b.build(), &CompileOptions::default()).unwrap();
    let x = rand_vec(&mut rng, 192, 1.0);
    let (_, resp) = guard_response(&guard, &x, &[1, 3, 8, 8], None);
    assert!(resp.iter().any(|&v| v != 0.0));
}

#[test]
fn corrupt_bytes_are_an_onnx_error() {
    let err = onnx::decode(b"this is not a protobuf \xff\xff\xff").unwrap_err();
    assert!(
        matches!(err, OnnxError::Decode { .. } | OnnxError::NoGraph { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not an ONNX model"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.onnx");
    std::fs::write(&p, [0x08u8, 0x07, 0x12]).unwrap();
    let err = onnx::load(&p).unwrap_err();
    assert!(err.to_string().contains("bad.onnx"), "{err}");
    let err = onnx::load(&dir.path().join("missing.onnx")).unwrap_err();
    assert!(matches!(err, OnnxError::Read { .. }), "{err}");
}

#[test]
fn save_and_load_round_trip() {
    let mut rng = StdRng::seed_from_u64(10);
    let net = net_fire(&mut rng);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("n.onnx");
    onnx::save(&net.model, &p).unwrap();
    assert_eq!(onnx::load(&p).unwrap(), net.model);
}

#[test]
fn mode_and_seed_parse() {
    assert_eq!("guided".parse::<Mode>().unwrap(), Mode::Guided);
    assert_eq!("plain".parse::<Mode>().unwrap(), Mode::Plain);
    assert!("other".parse::<Mode>().is_err());
    assert_eq!("last-conv".parse::<Seed>().unwrap(), Seed::LastConv);
    assert_eq!("top1".parse::<Seed>().unwrap(), Seed::Top1);
    assert_eq!("input".parse::<Seed>().unwrap(), Seed::Input);
    assert_eq!("class:17".parse::<Seed>().unwrap(), Seed::Class(17));
    assert_eq!(
        "tensor:fire9/concat_1".parse::<Seed>().unwrap(),
        Seed::Tensor("fire9/concat_1".into())
    );
    assert!("class:x".parse::<Seed>().is_err());
    assert!("bogus".parse::<Seed>().is_err());
    for s in ["last-conv", "top1", "input", "class:3", "tensor:a/b"] {
        assert_eq!(s.parse::<Seed>().unwrap().to_string(), s);
    }
}

// ---------------------------------------------------------------- real models

fn model_path(name: &str) -> PathBuf {
    data_dir().join("models").join(name)
}

/// Resize the short side to 256, centre-crop 224, NCHW float 0–255 in RGB order.
fn photo_rgb() -> Vec<f32> {
    let img = image::open(data_dir().join("images/dev/n01440764_tench.JPEG"))
        .unwrap()
        .to_rgb8();
    let (w, h) = img.dimensions();
    let s = 256.0 / w.min(h) as f32;
    let (nw, nh) = ((w as f32 * s).round() as u32, (h as f32 * s).round() as u32);
    let r = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    let (x0, y0) = ((nw - 224) / 2, (nh - 224) / 2);
    let mut out = vec![0f32; 3 * 224 * 224];
    for y in 0..224 {
        for x in 0..224 {
            let p = r.get_pixel(x0 + x, y0 + y);
            for c in 0..3 {
                out[(c * 224 + y as usize) * 224 + x as usize] = p[c] as f32;
            }
        }
    }
    out
}

/// SqueezeNet preprocessing: BGR, minus mean B104 G117 R123.
fn photo_squeezenet() -> Vec<f32> {
    let rgb = photo_rgb();
    let mut out = vec![0f32; rgb.len()];
    let mean = [104.0, 117.0, 123.0];
    for c in 0..3 {
        for i in 0..224 * 224 {
            out[c * 224 * 224 + i] = rgb[(2 - c) * 224 * 224 + i] - mean[c];
        }
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

const SHAPE: [usize; 4] = [1, 3, 224, 224];

#[test]
fn squeezenet_guard_keeps_the_class_output() {
    let model = onnx::load(&model_path("squeezenet1.1.onnx")).unwrap();
    let x = photo_squeezenet();
    let orig = run(
        &runnable(&pin_input(&model)),
        vec![(SHAPE.to_vec(), x.clone())],
    );
    let guard = compile(&model, &CompileOptions::default()).unwrap();
    let r = runnable(&guard);
    let out = run(&r, vec![(SHAPE.to_vec(), x)]);
    let probs = &out[output_index(&guard, "softmaxout_1")].1;
    let diff = probs
        .iter()
        .zip(&orig[0].1)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "class output differs by {diff}");
    let logits = &out[output_index(&guard, LOGITS)];
    assert_eq!(logits.0, vec![1, 1000]);
    assert_eq!(argmax(&logits.1), argmax(probs));
    assert_eq!(argmax(probs), 0, "tench is class 0");
    let resp = &out[output_index(&guard, RESPONSE)];
    assert_eq!(resp.0, SHAPE.to_vec());
    assert!(resp.1.iter().all(|v| v.is_finite()) && resp.1.iter().any(|&v| v != 0.0));
}

/// The original model with its input pinned (SqueezeNet declares it already).
fn pin_input(m: &ModelProto) -> ModelProto {
    m.clone()
}

#[test]
fn fp16_original_loads_and_matches() {
    let m16 = onnx::load(&model_path("squeezenet1.1-fp16.orig.onnx")).unwrap();
    let g = m16.graph.as_ref().unwrap();
    assert!(g.initializer.iter().all(|t| t.data_type == onnx::FLOAT));
    let m32 = onnx::load(&model_path("squeezenet1.1.onnx")).unwrap();
    let x = photo_squeezenet();
    let a = run(&runnable(&m16), vec![(SHAPE.to_vec(), x.clone())]);
    let b = run(&runnable(&m32), vec![(SHAPE.to_vec(), x)]);
    assert_eq!(argmax(&a[0].1), argmax(&b[0].1));
    let diff = a[0]
        .1
        .iter()
        .zip(&b[0].1)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-6, "{diff}");
    // It compiles too.
    compile(&m16, &CompileOptions::default()).unwrap();
}

fn shared_models() -> Vec<(&'static str, Vec<f32>)> {
    let rgb = photo_rgb();
    let eff: Vec<f32> = rgb.iter().map(|v| (v - 127.0) / 128.0).collect();
    let mob: Vec<f32> = rgb.iter().map(|v| v / 127.5 - 1.0).collect();
    vec![
        ("squeezenet1.1.onnx", photo_squeezenet()),
        ("mobilenet_v2_1.0_224.onnx", mob),
        ("efficientnet_lite0.onnx", eff),
    ]
}

#[test]
fn shared_models_compile_and_run() {
    for (name, x) in shared_models() {
        let model = onnx::load(&model_path(name)).unwrap();
        let orig = run(&runnable(&model), vec![(SHAPE.to_vec(), x.clone())]);
        for (mode, seed) in [(Mode::Guided, Seed::LastConv), (Mode::Plain, Seed::Input)] {
            let guard = compile(
                &model,
                &CompileOptions {
                    mode,
                    seed: seed.clone(),
                    input_shape: None,
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            for n in &guard.graph.as_ref().unwrap().node {
                assert!(
                    TENSORRT_SAFE_OPS.contains(&n.op_type.as_str()),
                    "{name}: op {} not TensorRT-safe",
                    n.op_type
                );
                assert!(n.domain.is_empty(), "{name}: custom domain");
            }
            let mut inputs = vec![(SHAPE.to_vec(), x.clone())];
            if seed == Seed::Input {
                let mut s = vec![0f32; 1000];
                s[argmax(&orig[0].1)] = 1.0;
                inputs.push((vec![1, 1000], s));
            }
            let out = run(&runnable(&guard), inputs);
            let first = &out[0].1;
            let diff = first
                .iter()
                .zip(&orig[0].1)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{name}: class output differs by {diff}");
            let resp = &out[output_index(&guard, RESPONSE)];
            assert_eq!(resp.0, SHAPE.to_vec(), "{name}");
            assert!(
                resp.1.iter().all(|v| v.is_finite()),
                "{name}: non-finite response"
            );
            assert!(resp.1.iter().any(|&v| v != 0.0), "{name}: zero response");
            eprintln!(
                "{name} {mode} {seed}: {} nodes",
                guard.graph.as_ref().unwrap().node.len()
            );
        }
    }
}

#[test]
fn squeezenet_named_tensor_seed() {
    let model = onnx::load(&model_path("squeezenet1.1.onnx")).unwrap();
    let opts = CompileOptions {
        seed: Seed::Tensor("fire9/concat_1".into()),
        ..Default::default()
    };
    let guard = compile(&model, &opts).unwrap();
    let out = run(
        &runnable(&guard),
        vec![(SHAPE.to_vec(), photo_squeezenet())],
    );
    let resp = &out[output_index(&guard, RESPONSE)].1;
    assert!(resp.iter().any(|&v| v != 0.0));
    let err = compile(
        &model,
        &CompileOptions {
            seed: Seed::Tensor("nope".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope"));
    assert!(
        model
            .graph
            .as_ref()
            .unwrap()
            .input
            .iter()
            .all(|i| i.name != SEED)
    );
}

/// Ad-hoc timing: `cargo test --test compiler -- --ignored --nocapture bench_`.
#[test]
#[ignore]
fn bench_forward_vs_guard() {
    for (name, x) in shared_models() {
        let model = onnx::load(&model_path(name)).unwrap();
        let fwd = runnable(&model);
        let guard = runnable(&compile(&model, &CompileOptions::default()).unwrap());
        let med = |r: &Runnable| {
            let t: Tensor = Tensor::from_shape(&SHAPE, &x).unwrap();
            for _ in 0..3 {
                r.run(tvec![t.clone().into()]).unwrap();
            }
            let mut v: Vec<f64> = (0..20)
                .map(|_| {
                    let s = std::time::Instant::now();
                    r.run(tvec![t.clone().into()]).unwrap();
                    s.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[10]
        };
        let (f, g) = (med(&fwd), med(&guard));
        eprintln!(
            "{name}: forward {f:.1} ms, guard (guided, last-conv) {g:.1} ms, ratio {:.2}",
            g / f
        );
    }
}

/// Ad-hoc micro timing of single adjoints: `cargo test --test compiler -- --ignored --nocapture micro_`.
#[test]
#[ignore]
fn micro_adjoint_timings() {
    let mut rng = StdRng::seed_from_u64(1);
    type Make = Box<dyn Fn(&mut GraphBuilder, &str, &mut StdRng) -> String>;
    let cases: Vec<(&str, Vec<usize>, Make)> = vec![
        (
            "maxpool3x3/2 64x111",
            vec![1, 64, 111, 111],
            Box::new(|b: &mut GraphBuilder, x: &str, _: &mut StdRng| {
                b.node(
                    "MaxPool",
                    &[x],
                    vec![
                        attr_ints("kernel_shape", &[3, 3]),
                        attr_ints("strides", &[2, 2]),
                    ],
                )
            }),
        ),
        (
            "conv3x3/2 3->64 224",
            vec![1, 3, 224, 224],
            Box::new(|b: &mut GraphBuilder, x: &str, rng: &mut StdRng| {
                let w = conv_w(b, rng, 64, 3, 3);
                b.node("Conv", &[x, &w], vec![attr_ints("strides", &[2, 2])])
            }),
        ),
        (
            "conv3x3/1 64->64 55 + relu",
            vec![1, 64, 55, 55],
            Box::new(|b: &mut GraphBuilder, x: &str, rng: &mut StdRng| {
                let w = conv_w(b, rng, 64, 64, 3);
                let c = b.node("Conv", &[x, &w], vec![attr_ints("pads", &[1, 1, 1, 1])]);
                b.node("Relu", &[&c], vec![])
            }),
        ),
    ];
    for (name, shape, f) in cases {
        let mut b = GraphBuilder::new(13);
        let x = b.input("x", &shape);
        let y = f(&mut b, &x, &mut rng);
        let g = b.node("GlobalAveragePool", &[&y], vec![]);
        let fl = b.node("Flatten", &[&g], vec![]);
        b.output(&fl, None);
        let m = b.build();
        let guard = compile(
            &m,
            &CompileOptions {
                seed: Seed::Tensor(y.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let n: usize = shape.iter().product();
        let xv = rand_vec(&mut rng, n, 1.0);
        let med = |r: &Runnable| {
            let t: Tensor = Tensor::from_shape(&shape, &xv).unwrap();
            let mut v: Vec<f64> = (0..11)
                .map(|_| {
                    let s = std::time::Instant::now();
                    r.run(tvec![t.clone().into()]).unwrap();
                    s.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[5]
        };
        let (a, c) = (med(&runnable(&m)), med(&runnable(&guard)));
        eprintln!("{name}: forward {a:.2} ms, guard {c:.2} ms");
    }
}

/// Ad-hoc per-op-kind profile of a guard frame: `cargo test --test compiler -- --ignored --nocapture profile_`.
#[test]
#[ignore]
fn profile_guard_ops() {
    let which =
        std::env::var("PROFILE_MODEL").unwrap_or_else(|_| "mobilenet_v2_1.0_224.onnx".into());
    let (name, x) = shared_models()
        .into_iter()
        .find(|(n, _)| *n == which)
        .unwrap();
    let model = onnx::load(&model_path(name)).unwrap();
    let r = runnable(&compile(&model, &CompileOptions::default()).unwrap());
    let mut acc: std::collections::HashMap<String, f64> = Default::default();
    for _ in 0..5 {
        let t: Tensor = Tensor::from_shape(&SHAPE, &x).unwrap();
        let mut st = r.spawn().unwrap();
        st.run_plan_with_eval(tvec![t.into()], |ctx, state, node, input| {
            let s = std::time::Instant::now();
            let o = tract_onnx::tract_core::plan::eval(ctx, state, node, input);
            *acc.entry(node.op().name().to_string()).or_default() +=
                s.elapsed().as_secs_f64() * 1e3 / 5.0;
            o
        })
        .unwrap();
    }
    let mut v: Vec<_> = acc.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (k, t) in v.iter().take(15) {
        eprintln!("{name}: {k:30} {t:7.2} ms");
    }
}

/// Cross-engine helper: writes guard graphs and tract's response on the test photo to
/// `$DUMP_DIR` (for comparing with ONNX Runtime by hand):
/// `DUMP_DIR=/tmp/d cargo test --test compiler -- --ignored dump_`.
#[test]
#[ignore]
fn dump_guard_responses() {
    let dir =
        PathBuf::from(std::env::var("DUMP_DIR").unwrap_or_else(|_| "/tmp/advguard-dump".into()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, x) in shared_models() {
        let model = onnx::load(&model_path(name)).unwrap();
        let guard = compile(&model, &CompileOptions::default()).unwrap();
        onnx::save(&guard, &dir.join(format!("{name}.guard.onnx"))).unwrap();
        let out = run(&runnable(&guard), vec![(SHAPE.to_vec(), x.clone())]);
        let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(dir.join(format!("{name}.input.f32")), bytes(&x)).unwrap();
        std::fs::write(
            dir.join(format!("{name}.response.f32")),
            bytes(&out[output_index(&guard, RESPONSE)].1),
        )
        .unwrap();
    }
}
