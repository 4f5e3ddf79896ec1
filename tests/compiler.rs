//! Tests of the guard-graph compiler and the ONNX IR helpers.
//!
//! - random builder networks covering every supported op: plain mode against
//!   finite differences, guided and plain against a direct f64 reference;
//! - the three shared models: compile, run on tract, logits equal the original;
//! - errors: unsupported ops, corrupt bytes; FP16 loading.

#[path = "common/onnx_ref.rs"]
mod onnx_ref;

use advguard::engine::compile::{
    CompileError, CompileOptions, Mode, Seed, TENSORRT_SAFE_OPS, Target, compile,
};
use advguard::engine::{LOGITS, RESPONSE, SEED};
use advguard::onnx::{
    self, GraphBuilder, OnnxError, attr_float, attr_int, attr_ints, attr_string, pb::ModelProto,
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

/// Every node of a guard graph is a default-domain op in TensorRT's ONNX parser set.
fn assert_tensorrt_safe(guard: &ModelProto, label: &str) {
    for n in &guard.graph.as_ref().unwrap().node {
        assert!(
            TENSORRT_SAFE_OPS.contains(&n.op_type.as_str()),
            "{label}: op {} not TensorRT-safe",
            n.op_type
        );
        assert!(n.domain.is_empty(), "{label}: custom domain");
    }
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
/// Both modes, each written for both targets (tract's Sign masks, ONNX Runtime's
/// comparison masks; tract runs either form).
fn modes_and_targets() -> [(Mode, Target); 4] {
    [
        (Mode::Guided, Target::Tract),
        (Mode::Plain, Target::Tract),
        (Mode::Guided, Target::OnnxRuntime),
        (Mode::Plain, Target::OnnxRuntime),
    ]
}

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
    for (mode, target) in modes_and_targets() {
        let guided = mode == Mode::Guided;
        // External seed at the logits.
        let guard = compile(
            &net.model,
            &CompileOptions {
                mode,
                target,
                seed: Seed::Input,
                ..Default::default()
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
        assert!(e < 1e-4, "{mode}/{target} seed=input: relative error {e}");
        // LastConv seed: gradient of ½‖a‖² at the last conv's activation.
        let guard = compile(
            &net.model,
            &CompileOptions {
                mode,
                target,
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
        assert!(
            e < 1e-4,
            "{mode}/{target} seed=last-conv: relative error {e}"
        );
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

/// Input → MaxPool → Flatten, with the MaxPool node (for `onnx_ref::pool_windows`).
fn maxpool_model(
    shape: &[usize],
    attrs: Vec<onnx::pb::AttributeProto>,
) -> (ModelProto, String, onnx::pb::NodeProto) {
    let mut b = GraphBuilder::new(13);
    let x = b.input("x", shape);
    let p = b.node("MaxPool", &[&x], attrs);
    let node = b.nodes.last().unwrap().clone();
    let f = b.node("Flatten", &[&p], vec![]);
    b.output(&f, None);
    (b.build(), f, node)
}

/// Plain mode, `Seed::Input` with positive seeds 1, 2, …: the guard's response equals
/// the reference's, and each window's seed is routed to exactly one position (the
/// response sums to the seeds' sum). Returns the reference gradient and the seeds.
fn check_maxpool_routing(
    model: &ModelProto,
    f: &str,
    shape: &[usize],
    xv: &[f32],
) -> (T, Vec<f32>) {
    let rf = Ref::new(model);
    let vals = rf.forward("x", &T::from_f32(shape, xv));
    let k = vals[f].data.len();
    let seed: Vec<f32> = (0..k).map(|i| 1.0 + i as f32).collect();
    let want = rf.backward(&vals, "x", f, T::from_f32(&[1, k], &seed), false);
    let seed_sum: f64 = seed.iter().map(|&v| v as f64).sum();
    let want_sum: f64 = want.data.iter().map(|v| v.abs()).sum();
    assert!(
        (want_sum - seed_sum).abs() < 1e-9 * seed_sum,
        "reference: routed weight {want_sum} vs seeds {seed_sum}"
    );
    for target in [Target::Tract, Target::OnnxRuntime] {
        let guard = compile(
            model,
            &CompileOptions {
                mode: Mode::Plain,
                seed: Seed::Input,
                target,
                ..Default::default()
            },
        )
        .unwrap();
        let (_, resp) = guard_response(&guard, xv, shape, Some(&seed));
        let resp_sum: f64 = resp.iter().map(|v| v.abs() as f64).sum();
        assert!(
            (resp_sum - seed_sum).abs() < 1e-6 * seed_sum,
            "guard: routed weight {resp_sum} vs seeds {seed_sum} ({target}: one position per window expected)"
        );
        let e = rel_err(&resp, &want.data);
        assert!(e < 1e-6, "{target}: relative error {e}");
    }
    (want, seed)
}

fn window_max(xv: &[f32], w: &[usize]) -> f32 {
    w.iter().map(|&q| xv[q]).fold(f32::NEG_INFINITY, f32::max)
}

#[test]
fn maxpool_ties_on_the_input_go_to_the_first_maximum() {
    // Input → overlapping MaxPool 3×3/2 (ceil) directly, on quantised values: many ties.
    let shape = [1, 2, 9, 8];
    let (model, f, node) = maxpool_model(
        &shape,
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_int("ceil_mode", 1),
        ],
    );
    let mut rng = StdRng::seed_from_u64(5);
    let xv: Vec<f32> = (0..144).map(|_| rng.random_range(0..3) as f32).collect();
    let windows = onnx_ref::pool_windows(&node, &shape);
    let tied = windows
        .iter()
        .filter(|w| {
            let m = window_max(&xv, w);
            w.iter().filter(|&&q| xv[q] == m).count() > 1
        })
        .count();
    assert!(
        tied * 2 > windows.len(),
        "the test needs tied maxima ({tied} of {} windows tied)",
        windows.len()
    );
    check_maxpool_routing(&model, &f, &shape, &xv);
}

#[test]
fn maxpool_constant_regions_go_to_the_first_maximum() {
    // Channel 0 constant and negative (every window fully tied; a zero padding would
    // win), channel 1 constant 3×3 blocks of -0.5 / 1.5.
    let cases: Vec<(&str, [usize; 4], Vec<onnx::pb::AttributeProto>)> = vec![
        (
            "3x3/2 ceil",
            [1, 2, 9, 8],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_int("ceil_mode", 1),
            ],
        ),
        (
            "3x3/2 pads 1",
            [1, 2, 8, 8],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        (
            "3x3/2 pads 1 ceil",
            [1, 2, 8, 9],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_int("ceil_mode", 1),
            ],
        ),
        (
            "2x2/1 dilation 2",
            [1, 2, 7, 7],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("dilations", &[2, 2]),
            ],
        ),
    ];
    for (name, shape, attrs) in cases {
        let (model, f, node) = maxpool_model(&shape, attrs);
        let (h, w) = (shape[2], shape[3]);
        let xv: Vec<f32> = (0..2 * h * w)
            .map(|i| {
                let (c, r, q) = (i / (h * w), (i / w) % h, i % w);
                if c == 0 {
                    -1.5
                } else if (r / 3 + q / 3) % 2 == 0 {
                    -0.5
                } else {
                    1.5
                }
            })
            .collect();
        let (want, seed) = check_maxpool_routing(&model, &f, &shape, &xv);
        // Directly from the rule: on the constant channel, window k's seed goes to its
        // first in-bounds cell.
        let windows = onnx_ref::pool_windows(&node, &shape);
        let mut expect = vec![0f64; h * w];
        for (k, win) in windows.iter().enumerate() {
            if win[0] < h * w {
                expect[win[0]] += seed[k] as f64;
            }
        }
        assert_eq!(
            &want.data[..h * w],
            &expect[..],
            "{name}: reference, channel 0"
        );
        eprintln!(
            "{name}: {} windows, all tied on channel 0",
            windows.len() / 2
        );
    }
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
                ..Default::default()
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

/// Central finite differences of `f` (f64) along 4 random directions equal the
/// response's directional derivatives, relative to ‖response‖·‖direction‖.
fn assert_directional_derivatives(
    rng: &mut StdRng,
    x: &[f32],
    resp: &[f32],
    f: impl Fn(&[f64]) -> f64,
) {
    let h = 1e-5;
    for _ in 0..4 {
        let d: Vec<f64> = (0..x.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
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
            ..Default::default()
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
    assert_directional_derivatives(&mut rng, &x, &resp, f);
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

// ---------------------------------------------------------------- detector ops

/// Detector-like network: Conv → HardSwish the exporters' way (x·Clip(x+3, 0, 6)/6),
/// depthwise stride-2 Conv, LeakyRelu, squeeze-excite (GlobalAveragePool → 1×1 Conv →
/// Relu → 1×1 Conv → HardSigmoid → Mul with the feature map), Split into halves, Add,
/// Concat, Slice, Resize ×2 linear/asymmetric, Concat of skip + upsampled, Resize ×2
/// nearest/floor/asymmetric, 1×1 head Conv, Sigmoid, Flatten. Returns the net and the
/// Sigmoid output.
fn net_detector(rng: &mut StdRng) -> (Net, String) {
    let mut b = GraphBuilder::new(13);
    let x = b.input("image", &[1, 3, 16, 16]);
    // Large first weights, so the HardSwish sees both of its flat parts.
    let w = rand_vec(rng, 8 * 27, 6.0 * (3.0f32 / 27.0).sqrt());
    let w = b.init_f32("w", &[8, 3, 3, 3], w);
    let bb = conv_b(&mut b, rng, 8);
    let c1 = b.node(
        "Conv",
        &[&x, &w, &bb],
        vec![attr_ints("pads", &[1, 1, 1, 1])],
    );
    let three = b.scalar_f32("three", 3.0);
    let zero = b.scalar_f32("zero", 0.0);
    let six = b.scalar_f32("six", 6.0);
    let t = b.node("Add", &[&c1, &three], vec![]);
    let t = b.node("Clip", &[&t, &zero, &six], vec![]);
    let m = b.node("Mul", &[&c1, &t], vec![]);
    let h1 = b.node("Div", &[&m, &six], vec![]);
    let w = conv_w(&mut b, rng, 8, 1, 3);
    let d = b.node(
        "Conv",
        &[&h1, &w],
        vec![
            attr_int("group", 8),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let l = b.node("LeakyRelu", &[&d], vec![attr_float("alpha", 0.1)]);
    // Squeeze-excite.
    let g = b.node("GlobalAveragePool", &[&l], vec![]);
    let w = conv_w(&mut b, rng, 4, 8, 1);
    let bb = conv_b(&mut b, rng, 4);
    let s = b.node("Conv", &[&g, &w, &bb], vec![]);
    let s = b.node("Relu", &[&s], vec![]);
    let w = rand_vec(rng, 8 * 4, 3.0 * (3.0f32 / 4.0).sqrt());
    let w = b.init_f32("w", &[8, 4, 1, 1], w);
    let bb = conv_b(&mut b, rng, 8);
    let s = b.node("Conv", &[&s, &w, &bb], vec![]);
    let s = b.node(
        "HardSigmoid",
        &[&s],
        vec![attr_float("alpha", 1.0 / 6.0), attr_float("beta", 0.5)],
    );
    let se = b.node("Mul", &[&l, &s], vec![]);
    let w = conv_w(&mut b, rng, 8, 8, 1);
    let bb = conv_b(&mut b, rng, 8);
    let p = b.node("Conv", &[&se, &w, &bb], vec![]);
    let split = b.init_i64("split", &[2], vec![4, 4]);
    let halves = b.node_n("Split", &[&p, &split], 2, vec![attr_int("axis", 1)]);
    let q = b.node("Add", &[&halves[0], &halves[1]], vec![]);
    let r = b.node("Concat", &[&q, &halves[1]], vec![attr_int("axis", 1)]);
    let st = b.init_i64("starts", &[1], vec![1]);
    let en = b.init_i64("ends", &[1], vec![7]);
    let ax = b.init_i64("axes", &[1], vec![1]);
    let sl = b.node("Slice", &[&r, &st, &en, &ax], vec![]);
    let scales = b.init_f32("scales", &[4], vec![1.0, 1.0, 2.0, 2.0]);
    let u1 = b.node(
        "Resize",
        &[&sl, "", &scales],
        vec![
            attr_string("mode", "linear"),
            attr_string("coordinate_transformation_mode", "asymmetric"),
        ],
    );
    let cat = b.node("Concat", &[&h1, &u1], vec![attr_int("axis", 1)]);
    let w = conv_w(&mut b, rng, 6, 14, 3);
    let bb = conv_b(&mut b, rng, 6);
    let e = b.node(
        "Conv",
        &[&cat, &w, &bb],
        vec![
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let e = b.node("Relu", &[&e], vec![]);
    let u2 = b.node(
        "Resize",
        &[&e, "", &scales],
        vec![
            attr_string("mode", "nearest"),
            attr_string("coordinate_transformation_mode", "asymmetric"),
            attr_string("nearest_mode", "floor"),
        ],
    );
    let w = conv_w(&mut b, rng, 3, 6, 1);
    let bb = conv_b(&mut b, rng, 3);
    let hc = b.node("Conv", &[&u2, &w, &bb], vec![]);
    let sig = b.node("Sigmoid", &[&hc], vec![]);
    let f = b.node("Flatten", &[&sig], vec![]);
    b.output(&f, Some(&[1, 768]));
    let net = Net {
        model: b.build(),
        input: vec![1, 3, 16, 16],
        last_conv: hc,
    };
    (net, sig)
}

/// Classifier with the native ops (opset 14): HardSwish, depthwise stride-2 Conv,
/// LeakyRelu, HardSigmoid (alpha 0.25, beta 0.4) gating its own input's producer, a
/// last Conv followed by HardSwish, GlobalAveragePool, Gemm, Softmax. No Relu or Clip.
fn net_hard_native(rng: &mut StdRng) -> Net {
    let mut b = GraphBuilder::new(14);
    let x = b.input("x", &[1, 3, 12, 12]);
    let w = rand_vec(rng, 8 * 27, 6.0 * (3.0f32 / 27.0).sqrt());
    let w = b.init_f32("w", &[8, 3, 3, 3], w);
    let bb = conv_b(&mut b, rng, 8);
    let c1 = b.node(
        "Conv",
        &[&x, &w, &bb],
        vec![attr_ints("pads", &[1, 1, 1, 1])],
    );
    let h = b.node("HardSwish", &[&c1], vec![]);
    let w = conv_w(&mut b, rng, 8, 1, 3);
    let d = b.node(
        "Conv",
        &[&h, &w],
        vec![
            attr_int("group", 8),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let l = b.node("LeakyRelu", &[&d], vec![attr_float("alpha", 0.2)]);
    let w = rand_vec(rng, 64, 3.0 * (3.0f32 / 8.0).sqrt());
    let w = b.init_f32("w", &[8, 8, 1, 1], w);
    let gate = b.node("Conv", &[&l, &w], vec![]);
    let gate = b.node(
        "HardSigmoid",
        &[&gate],
        vec![attr_float("alpha", 0.25), attr_float("beta", 0.4)],
    );
    let m = b.node("Mul", &[&gate, &l], vec![]);
    let w = conv_w(&mut b, rng, 6, 8, 3);
    let bb = conv_b(&mut b, rng, 6);
    let last = b.node(
        "Conv",
        &[&m, &w, &bb],
        vec![attr_ints("pads", &[1, 1, 1, 1])],
    );
    let h2 = b.node("HardSwish", &[&last], vec![]);
    let gp = b.node("GlobalAveragePool", &[&h2], vec![]);
    let f = b.node("Flatten", &[&gp], vec![]);
    Net {
        model: finish_gemm(b, rng, &f, &[1, 6]),
        input: vec![1, 3, 12, 12],
        last_conv: last,
    }
}

/// Panics unless the model has a node of every one of these op types.
fn assert_has_ops(m: &ModelProto, ops: &[&str]) {
    let g = m.graph.as_ref().unwrap();
    for op in ops {
        assert!(
            g.node.iter().any(|n| n.op_type == *op),
            "the net has no {op}; test is void"
        );
    }
}

const DETECTOR_OPS: &[&str] = &[
    "Conv",
    "Add",
    "Clip",
    "Mul",
    "Div",
    "LeakyRelu",
    "GlobalAveragePool",
    "Relu",
    "HardSigmoid",
    "Split",
    "Concat",
    "Slice",
    "Resize",
    "Sigmoid",
];

/// One small model per op configuration: `x` → … → Flatten (so `Seed::Input` works).
struct OpCase {
    group: &'static str,
    name: String,
    model: ModelProto,
    input: Vec<usize>,
    /// Inputs are uniform in ±scale.
    scale: f32,
    op: &'static str,
}

fn op_case(
    group: &'static str,
    name: &str,
    op: &'static str,
    opset: i64,
    input: &[usize],
    scale: f32,
    build: impl FnOnce(&mut GraphBuilder, &str) -> String,
) -> OpCase {
    let mut b = GraphBuilder::new(opset);
    let x = b.input("x", input);
    let y = build(&mut b, &x);
    let f = b.node("Flatten", &[&y], vec![]);
    b.output(&f, None);
    OpCase {
        group,
        name: name.to_string(),
        model: b.build(),
        input: input.to_vec(),
        scale,
        op,
    }
}

fn resize_case(
    name: &str,
    input: &[usize],
    scales: Option<[f32; 4]>,
    sizes: Option<[i64; 4]>,
    attrs: Vec<(&'static str, &'static str)>,
) -> OpCase {
    op_case("resize", name, "Resize", 13, input, 1.0, |b, x| {
        let attrs = attrs.iter().map(|(k, v)| attr_string(k, v)).collect();
        match (scales, sizes) {
            (Some(s), _) => {
                let s = b.init_f32("scales", &[4], s.to_vec());
                b.node("Resize", &[x, "", &s], attrs)
            }
            (None, Some(z)) => {
                let z = b.init_i64("sizes", &[4], z.to_vec());
                b.node("Resize", &[x, "", "", &z], attrs)
            }
            _ => unreachable!(),
        }
    })
}

fn slice_case(
    name: &str,
    input: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> OpCase {
    let (starts, ends) = (starts.to_vec(), ends.to_vec());
    let (axes, steps) = (axes.map(|a| a.to_vec()), steps.map(|a| a.to_vec()));
    op_case("slice", name, "Slice", 13, input, 1.0, move |b, x| {
        let k = starts.len();
        let s = b.init_i64("starts", &[k], starts);
        let e = b.init_i64("ends", &[k], ends);
        let a = axes.map(|a| b.init_i64("axes", &[k], a));
        let st = steps.map(|v| b.init_i64("steps", &[k], v));
        let a = a.unwrap_or_default();
        match st {
            Some(st) => b.node("Slice", &[x, &s, &e, &a, &st], vec![]),
            None if a.is_empty() => b.node("Slice", &[x, &s, &e], vec![]),
            None => b.node("Slice", &[x, &s, &e, &a], vec![]),
        }
    })
}

/// Every op configuration the reference interpreter gained for detectors.
fn op_cases() -> Vec<OpCase> {
    let mut rng = StdRng::seed_from_u64(40);
    let mut v = vec![];
    let shape = [1, 3, 5, 4];
    let unary = |name: &str, op: &'static str, opset, attrs: Vec<onnx::pb::AttributeProto>| {
        op_case("activation", name, op, opset, &shape, 4.0, move |b, x| {
            b.node(op, &[x], attrs)
        })
    };
    v.push(unary("Sigmoid", "Sigmoid", 13, vec![]));
    v.push(unary("LeakyRelu default", "LeakyRelu", 13, vec![]));
    v.push(unary(
        "LeakyRelu 0.2",
        "LeakyRelu",
        13,
        vec![attr_float("alpha", 0.2)],
    ));
    v.push(unary("HardSigmoid default", "HardSigmoid", 13, vec![]));
    v.push(unary(
        "HardSigmoid 1/6, 1/2",
        "HardSigmoid",
        13,
        vec![attr_float("alpha", 1.0 / 6.0), attr_float("beta", 0.5)],
    ));
    v.push(unary("HardSwish", "HardSwish", 14, vec![]));
    v.push(op_case(
        "activation",
        "HardSwish as x·Clip(x+3,0,6)/6",
        "Clip",
        13,
        &shape,
        4.0,
        |b, x| {
            let three = b.scalar_f32("three", 3.0);
            let zero = b.scalar_f32("zero", 0.0);
            let six = b.scalar_f32("six", 6.0);
            let t = b.node("Add", &[x, &three], vec![]);
            let t = b.node("Clip", &[&t, &zero, &six], vec![]);
            let m = b.node("Mul", &[x, &t], vec![]);
            b.node("Div", &[&m, &six], vec![])
        },
    ));
    // Products and quotients of two input-dependent tensors.
    v.push(op_case(
        "product",
        "x·Sigmoid(x)",
        "Mul",
        13,
        &shape,
        3.0,
        |b, x| {
            let s = b.node("Sigmoid", &[x], vec![]);
            b.node("Mul", &[x, &s], vec![])
        },
    ));
    v.push(op_case(
        "product",
        "x·x",
        "Mul",
        13,
        &shape,
        2.0,
        |b, x| b.node("Mul", &[x, x], vec![]),
    ));
    v.push(op_case(
        "product",
        "x/(1+x²)",
        "Div",
        13,
        &shape,
        2.0,
        |b, x| {
            let one = b.scalar_f32("one", 1.0);
            let sq = b.node("Mul", &[x, x], vec![]);
            let den = b.node("Add", &[&sq, &one], vec![]);
            b.node("Div", &[x, &den], vec![])
        },
    ));
    for (name, gate_first) in [("squeeze-excite a·s", false), ("squeeze-excite s·a", true)] {
        let se_shape = [1, 4, 5, 5];
        let mut r = StdRng::seed_from_u64(rng.random());
        v.push(op_case(
            "product",
            name,
            "GlobalAveragePool",
            13,
            &se_shape,
            1.0,
            move |b, x| {
                let w = conv_w(b, &mut r, 6, 4, 3);
                let a = b.node("Conv", &[x, &w], vec![attr_ints("pads", &[1, 1, 1, 1])]);
                let g = b.node("GlobalAveragePool", &[&a], vec![]);
                let w = conv_w(b, &mut r, 3, 6, 1);
                let bb = conv_b(b, &mut r, 3);
                let s = b.node("Conv", &[&g, &w, &bb], vec![]);
                let s = b.node("Relu", &[&s], vec![]);
                let w = conv_w(b, &mut r, 6, 3, 1);
                let bb = conv_b(b, &mut r, 6);
                let s = b.node("Conv", &[&s, &w, &bb], vec![]);
                let s = if gate_first {
                    b.node("Sigmoid", &[&s], vec![])
                } else {
                    b.node("HardSigmoid", &[&s], vec![])
                };
                if gate_first {
                    b.node("Mul", &[&s, &a], vec![])
                } else {
                    b.node("Mul", &[&a, &s], vec![])
                }
            },
        ));
    }
    // Split.
    v.push(op_case(
        "split",
        "split input [2,4] axis 1",
        "Split",
        13,
        &[1, 6, 4, 5],
        2.0,
        |b, x| {
            let sp = b.init_i64("split", &[2], vec![2, 4]);
            let o = b.node_n("Split", &[x, &sp], 2, vec![attr_int("axis", 1)]);
            let s = b.node("Sigmoid", &[&o[0]], vec![]);
            b.node("Concat", &[&o[1], &s], vec![attr_int("axis", 1)])
        },
    ));
    v.push(op_case(
        "split",
        "equal thirds axis -1, middle unused",
        "Split",
        13,
        &[1, 2, 3, 6],
        2.0,
        |b, x| {
            let o = b.node_n("Split", &[x], 3, vec![attr_int("axis", -1)]);
            let s = b.node("Sigmoid", &[&o[2]], vec![]);
            b.node("Add", &[&o[0], &s], vec![])
        },
    ));
    v.push(op_case(
        "split",
        "halves, one used twice",
        "Split",
        13,
        &[1, 4, 3, 3],
        2.0,
        |b, x| {
            let o = b.node_n("Split", &[x], 2, vec![attr_int("axis", 1)]);
            let m = b.node("Mul", &[&o[0], &o[1]], vec![]);
            b.node("Add", &[&m, &o[1]], vec![])
        },
    ));
    // Slice.
    let s4 = [1, 3, 7, 8];
    v.push(slice_case(
        "ends past the end, negative starts",
        &s4,
        &[1, -6],
        &[100, -1],
        Some(&[2, 3]),
        None,
    ));
    v.push(slice_case(
        "flip: step -1 from -1 to INT64_MIN",
        &s4,
        &[-1],
        &[i64::MIN],
        Some(&[2]),
        Some(&[-1]),
    ));
    v.push(slice_case(
        "negative step to INT64_MIN",
        &s4,
        &[-1],
        &[i64::MIN],
        Some(&[-1]),
        Some(&[-2]),
    ));
    v.push(slice_case(
        "all axes implicit, mixed steps",
        &s4,
        &[0, 1, 5, 6],
        &[1, 3, 0, -100],
        None,
        Some(&[1, 1, -2, -3]),
    ));
    v.push(slice_case(
        "clamped both ends, step 2",
        &s4,
        &[-100],
        &[100],
        Some(&[1]),
        Some(&[2]),
    ));
    v.push(slice_case(
        "start past the end, negative step",
        &s4,
        &[100, 2],
        &[0, 6],
        Some(&[2, 3]),
        Some(&[-3, 1]),
    ));
    // Resize.
    let r4 = [1, 2, 3, 4];
    let x2 = Some([1.0, 1.0, 2.0, 2.0]);
    v.push(resize_case(
        "nearest floor asymmetric ×2",
        &r4,
        x2,
        None,
        vec![
            ("mode", "nearest"),
            ("coordinate_transformation_mode", "asymmetric"),
            ("nearest_mode", "floor"),
        ],
    ));
    v.push(resize_case(
        "nearest round_prefer_floor half_pixel ×2",
        &r4,
        x2,
        None,
        vec![
            ("mode", "nearest"),
            ("coordinate_transformation_mode", "half_pixel"),
            ("nearest_mode", "round_prefer_floor"),
        ],
    ));
    v.push(resize_case(
        "nearest round_prefer_floor asymmetric ×3,×2",
        &r4,
        Some([1.0, 1.0, 3.0, 2.0]),
        None,
        vec![
            ("mode", "nearest"),
            ("coordinate_transformation_mode", "asymmetric"),
            ("nearest_mode", "round_prefer_floor"),
        ],
    ));
    v.push(resize_case("nearest defaults ×2", &r4, x2, None, vec![]));
    v.push(resize_case(
        "nearest round_prefer_floor half_pixel sizes",
        &r4,
        None,
        Some([1, 2, 6, 8]),
        vec![("mode", "nearest"), ("nearest_mode", "round_prefer_floor")],
    ));
    v.push(resize_case(
        "linear asymmetric ×2",
        &r4,
        x2,
        None,
        vec![
            ("mode", "linear"),
            ("coordinate_transformation_mode", "asymmetric"),
        ],
    ));
    v.push(resize_case(
        "linear half_pixel ×2",
        &r4,
        x2,
        None,
        vec![
            ("mode", "linear"),
            ("coordinate_transformation_mode", "half_pixel"),
        ],
    ));
    v.push(resize_case(
        "linear half_pixel sizes 5×7",
        &r4,
        None,
        Some([1, 2, 5, 7]),
        vec![
            ("mode", "linear"),
            ("coordinate_transformation_mode", "half_pixel"),
        ],
    ));
    v.push(resize_case(
        "linear asymmetric sizes 6×8",
        &r4,
        None,
        Some([1, 2, 6, 8]),
        vec![
            ("mode", "linear"),
            ("coordinate_transformation_mode", "asymmetric"),
        ],
    ));
    v
}

fn rand_input(rng: &mut StdRng, shape: &[usize], scale: f32) -> Vec<f32> {
    rand_vec(rng, shape.iter().product(), scale)
}

/// Both modes, `Seed::Input`: logits and response equal the reference's.
fn check_case_against_reference(c: &OpCase, seed_rng: u64) {
    assert_has_ops(&c.model, &[c.op]);
    let mut rng = StdRng::seed_from_u64(seed_rng);
    let x = rand_input(&mut rng, &c.input, c.scale);
    let rf = Ref::new(&c.model);
    let vals = rf.forward("x", &T::from_f32(&c.input, &x));
    let out = pre_softmax(&c.model);
    let k = vals[&out].data.len();
    let seed = rand_vec(&mut rng, k, 1.0);
    for (mode, target) in modes_and_targets() {
        let guard = compile(
            &c.model,
            &CompileOptions {
                mode,
                target,
                seed: Seed::Input,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let (logits, resp) = guard_response(&guard, &x, &c.input, Some(&seed));
        let e = rel_err(&logits, &vals[&out].data);
        assert!(e < 1e-5, "{} {mode}/{target}: logits differ ({e})", c.name);
        let want = rf.backward(
            &vals,
            "x",
            &out,
            T::from_f32(&[1, k], &seed),
            mode == Mode::Guided,
        );
        assert!(
            want.data.iter().any(|&v| v != 0.0),
            "{}: reference response is zero; test is void",
            c.name
        );
        assert!(
            resp.iter().any(|&v| v != 0.0),
            "{} {mode}/{target}: zero response",
            c.name
        );
        let e = rel_err(&resp, &want.data);
        assert!(e < 1e-4, "{} {mode}/{target}: relative error {e}", c.name);
    }
}

fn check_group(group: &str) {
    let cases: Vec<OpCase> = op_cases()
        .into_iter()
        .filter(|c| c.group == group)
        .collect();
    assert!(!cases.is_empty());
    for (i, c) in cases.iter().enumerate() {
        check_case_against_reference(c, 300 + i as u64);
    }
}

#[test]
fn activation_ops_match_reference() {
    check_group("activation");
}

#[test]
fn products_and_squeeze_excite_match_reference() {
    check_group("product");
}

#[test]
fn split_matches_reference() {
    check_group("split");
}

#[test]
fn slice_matches_reference() {
    check_group("slice");
}

#[test]
fn resize_matches_reference() {
    check_group("resize");
}

/// A tensor seed (gradient of ½‖t‖²) in both modes against the reference.
fn check_tensor_seed_against_reference(net: &Net, t: &str, seed_rng: u64) {
    let mut rng = StdRng::seed_from_u64(seed_rng);
    let x = rand_input(&mut rng, &net.input, 1.0);
    let rf = Ref::new(&net.model);
    let input = onnx::real_inputs(&net.model)[0].name.clone();
    let vals = rf.forward(&input, &T::from_f32(&net.input, &x));
    for (mode, target) in modes_and_targets() {
        let guard = compile(
            &net.model,
            &CompileOptions {
                mode,
                target,
                seed: Seed::Tensor(t.to_string()),
                ..Default::default()
            },
        )
        .unwrap();
        let (_, resp) = guard_response(&guard, &x, &net.input, None);
        let want = rf.backward(&vals, &input, t, vals[t].clone(), mode == Mode::Guided);
        assert!(
            want.data.iter().any(|&v| v != 0.0),
            "reference response is zero; test is void"
        );
        assert!(
            resp.iter().any(|&v| v != 0.0),
            "{mode}/{target}: zero response"
        );
        let e = rel_err(&resp, &want.data);
        assert!(
            e < 1e-4,
            "{mode}/{target} seed=tensor:{t}: relative error {e}"
        );
    }
}

/// Plain mode with a tensor seed equals central finite differences of ½‖t(x)‖².
fn check_finite_differences_tensor(net: &Net, t: &str, seed_rng: u64) {
    let mut rng = StdRng::seed_from_u64(seed_rng);
    let n: usize = net.input.iter().product();
    let x = rand_vec(&mut rng, n, 1.0);
    let rf = Ref::new(&net.model);
    let input = onnx::real_inputs(&net.model)[0].name.clone();
    let guard = compile(
        &net.model,
        &CompileOptions {
            mode: Mode::Plain,
            seed: Seed::Tensor(t.to_string()),
            ..Default::default()
        },
    )
    .unwrap();
    let (_, resp) = guard_response(&guard, &x, &net.input, None);
    assert!(resp.iter().any(|&v| v != 0.0), "zero response");
    let f = |xs: &[f64]| -> f64 {
        let v = rf.forward(&input, &T::new(net.input.clone(), xs.to_vec()));
        0.5 * v[t].data.iter().map(|a| a * a).sum::<f64>()
    };
    assert_directional_derivatives(&mut rng, &x, &resp, f);
}

#[test]
fn detector_network_matches_reference() {
    let mut rng = StdRng::seed_from_u64(41);
    let (net, sig) = net_detector(&mut rng);
    assert_has_ops(&net.model, DETECTOR_OPS);
    check_against_reference(&net, 42, false);
    check_tensor_seed_against_reference(&net, &sig, 43);
}

#[test]
fn detector_plain_mode_equals_finite_differences() {
    let mut rng = StdRng::seed_from_u64(44);
    let (net, sig) = net_detector(&mut rng);
    assert_has_ops(&net.model, DETECTOR_OPS);
    check_finite_differences(&net, 45);
    check_finite_differences_tensor(&net, &sig, 46);
}

#[test]
fn native_hard_ops_match_reference_and_finite_differences() {
    let mut rng = StdRng::seed_from_u64(47);
    let net = net_hard_native(&mut rng);
    assert_has_ops(
        &net.model,
        &["HardSwish", "HardSigmoid", "LeakyRelu", "Mul"],
    );
    check_against_reference(&net, 48, false);
    check_finite_differences(&net, 49);
    let h = net.last_conv.clone();
    check_finite_differences_tensor(&net, &h, 50);
}

#[test]
fn guard_ops_stay_tensorrt_safe_on_detector_ops() {
    let mut rng = StdRng::seed_from_u64(51);
    let (det, sig) = net_detector(&mut rng);
    let native = net_hard_native(&mut rng);
    let mut models = vec![("detector", det.model.clone(), Seed::Tensor(sig))];
    models.push(("detector", det.model, Seed::Input));
    models.push(("native", native.model.clone(), Seed::LastConv));
    models.push(("native", native.model, Seed::Top1));
    let mut cases: Vec<(String, ModelProto, Seed)> = models
        .into_iter()
        .map(|(n, m, s)| (n.to_string(), m, s))
        .collect();
    for c in op_cases() {
        cases.push((c.name, c.model, Seed::Input));
    }
    for (name, model, seed) in cases {
        for mode in [Mode::Guided, Mode::Plain] {
            let guard = compile(
                &model,
                &CompileOptions {
                    mode,
                    seed: seed.clone(),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_tensorrt_safe(&guard, &format!("{name} {mode} {seed}"));
        }
    }
}

// ---------------------------------------------------------------- the reference itself

/// The reference's own plain backward against central finite differences of its own
/// forward, for ⟨g, t(x)⟩ with a random g: coordinate-wise for small inputs, along
/// random directions otherwise. No compiler involved.
fn ref_finite_differences(model: &ModelProto, shape: &[usize], x: &[f32], t: &str, seed_rng: u64) {
    let mut rng = StdRng::seed_from_u64(seed_rng);
    let rf = Ref::new(model);
    let input = onnx::real_inputs(model)[0].name.clone();
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let vals = rf.forward(&input, &T::new(shape.to_vec(), x.clone()));
    let ts = vals[t].shape.clone();
    let gs: Vec<f64> = (0..vals[t].data.len())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let grad = rf.backward(&vals, &input, t, T::new(ts, gs.clone()), false);
    assert!(
        grad.data.iter().any(|&v| v != 0.0),
        "zero gradient; test is void"
    );
    let f = |xs: &[f64]| -> f64 {
        let v = rf.forward(&input, &T::new(shape.to_vec(), xs.to_vec()));
        v[t].data.iter().zip(&gs).map(|(a, b)| a * b).sum()
    };
    let h = 1e-5;
    let gnorm = grad.data.iter().map(|v| v * v).sum::<f64>().sqrt();
    let n = x.len();
    if n <= 400 {
        for i in 0..n {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            let err = (fd - grad.data[i]).abs() / gnorm;
            assert!(
                err < 1e-7,
                "element {i}: finite differences {fd} vs backward {} ({err})",
                grad.data[i]
            );
        }
    } else {
        for _ in 0..6 {
            let d: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let xp: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + h * b).collect();
            let xm: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a - h * b).collect();
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            let an: f64 = grad.data.iter().zip(&d).map(|(g, b)| g * b).sum();
            let dnorm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
            let err = (fd - an).abs() / (gnorm * dnorm);
            assert!(
                err < 1e-7,
                "finite differences {fd} vs backward {an} ({err})"
            );
        }
    }
}

#[test]
fn reference_new_ops_backward_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(60);
    for c in op_cases() {
        assert_has_ops(&c.model, &[c.op]);
        let x = rand_input(&mut rng, &c.input, c.scale);
        let out = pre_softmax(&c.model);
        eprintln!("{}", c.name);
        ref_finite_differences(&c.model, &c.input, &x, &out, rng.random());
    }
}

#[test]
fn reference_nets_backward_matches_finite_differences() {
    let mut rng = StdRng::seed_from_u64(61);
    let (det, sig) = net_detector(&mut rng);
    let native = net_hard_native(&mut rng);
    let nets = [
        (det, vec![sig]),
        (native, vec![]),
        (net_fire(&mut rng), vec![]),
        (net_mobile(&mut rng), vec![]),
        (net_strided(&mut rng), vec![]),
    ];
    for (net, extra) in nets {
        let x = rand_input(&mut rng, &net.input, 1.0);
        let mut seeds = vec![pre_softmax(&net.model), net.last_conv.clone()];
        seeds.extend(extra);
        for t in seeds {
            ref_finite_differences(&net.model, &net.input, &x, &t, rng.random());
        }
    }
}

/// Reference forward against tract on the original model's first output.
fn ref_forward_matches_tract(name: &str, model: &ModelProto, shape: &[usize], x: &[f32]) {
    let rf = Ref::new(model);
    let input = onnx::real_inputs(model)[0].name.clone();
    let vals = rf.forward(&input, &T::from_f32(shape, x));
    let out_name = &model.graph.as_ref().unwrap().output[0].name;
    let got = run(&runnable(model), vec![(shape.to_vec(), x.to_vec())]);
    let want = &vals[out_name];
    assert_eq!(got[0].1.len(), want.data.len(), "{name}: output size");
    let e = rel_err(&got[0].1, &want.data);
    assert!(e < 1e-5, "{name}: tract and the reference differ ({e})");
}

#[test]
fn reference_forward_matches_tract_on_new_ops() {
    let mut rng = StdRng::seed_from_u64(62);
    for c in op_cases() {
        let x = rand_input(&mut rng, &c.input, c.scale);
        ref_forward_matches_tract(&c.name, &c.model, &c.input, &x);
    }
    let (det, _) = net_detector(&mut rng);
    let native = net_hard_native(&mut rng);
    for (name, net) in [("detector", det), ("native", native)] {
        let x = rand_input(&mut rng, &net.input, 1.0);
        ref_forward_matches_tract(name, &net.model, &net.input, &x);
    }
}

/// A one-node model x → op on a fixed input, through the reference.
fn ref_one(
    op: &str,
    x: T,
    extra: Vec<(&str, T)>,
    attrs: Vec<onnx::pb::AttributeProto>,
    n_out: usize,
) -> Vec<T> {
    let mut b = GraphBuilder::new(13);
    let xi = b.input("x", &x.shape);
    let mut ins = vec![xi];
    for (name, t) in &extra {
        if name.is_empty() {
            ins.push(String::new());
        } else if name.starts_with('i') {
            let v = t.data.iter().map(|&v| v as i64).collect();
            ins.push(b.init_i64(name, &t.shape, v));
        } else {
            let v = t.data.iter().map(|&v| v as f32).collect();
            ins.push(b.init_f32(name, &t.shape, v));
        }
    }
    let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
    let outs = b.node_n(op, &refs, n_out, attrs);
    let rf = Ref::new(&b.build());
    let vals = rf.forward("x", &x);
    outs.iter().map(|o| vals[o].clone()).collect()
}

fn t1(v: &[f64]) -> T {
    T::new(vec![1, 1, 1, v.len()], v.to_vec())
}

#[test]
fn reference_small_cases_by_hand() {
    let scales = ("scales", T::new(vec![4], vec![1.0, 1.0, 1.0, 2.0]));
    let rs = |mode: &str, ctm: &str, nm: &str| {
        vec![
            attr_string("mode", mode),
            attr_string("coordinate_transformation_mode", ctm),
            attr_string("nearest_mode", nm),
        ]
    };
    let resize = |x: &[f64], a| {
        ref_one(
            "Resize",
            t1(x),
            vec![("", T::zeros(&[0])), scales.clone()],
            a,
            1,
        )[0]
        .data
        .clone()
    };
    // nearest floor asymmetric ×2: c = i/2.
    assert_eq!(
        resize(&[1.0, 2.0, 3.0], rs("nearest", "asymmetric", "floor")),
        [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    );
    // nearest round_prefer_floor half_pixel ×2: c = -0.25, 0.25, 0.75, 1.25 → 0, 0, 1, 1.
    assert_eq!(
        resize(
            &[1.0, 2.0],
            rs("nearest", "half_pixel", "round_prefer_floor")
        ),
        [1.0, 1.0, 2.0, 2.0]
    );
    // linear asymmetric ×2: c = 0, 0.5, 1, 1.5 → 0, 0.5, 1, 1 (edge).
    assert_eq!(
        resize(&[0.0, 1.0], rs("linear", "asymmetric", "floor")),
        [0.0, 0.5, 1.0, 1.0]
    );
    // linear half_pixel ×2: c = -0.25, 0.25, 0.75, 1.25 → 0, 0.25, 0.75, 1.
    assert_eq!(
        resize(&[0.0, 1.0], rs("linear", "half_pixel", "floor")),
        [0.0, 0.25, 0.75, 1.0]
    );
    // nearest round_prefer_floor asymmetric ×3 (scales 3): c = 0, ⅓, ⅔, 1, 4/3, 5/3.
    let s3 = ("scales", T::new(vec![4], vec![1.0, 1.0, 1.0, 3.0]));
    let y = ref_one(
        "Resize",
        t1(&[1.0, 2.0]),
        vec![("", T::zeros(&[0])), s3],
        rs("nearest", "asymmetric", "round_prefer_floor"),
        1,
    );
    assert_eq!(y[0].data, [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
    // round_prefer_floor at exactly .5: sizes 4 → 8 with asymmetric, c = i/2: 0.5 → 0.
    let sizes = ("isizes", T::new(vec![4], vec![1.0, 1.0, 1.0, 4.0]));
    let y = ref_one(
        "Resize",
        t1(&[1.0, 2.0]),
        vec![("", T::zeros(&[0])), ("", T::zeros(&[0])), sizes],
        rs("nearest", "asymmetric", "round_prefer_floor"),
        1,
    );
    assert_eq!(y[0].data, [1.0, 1.0, 2.0, 2.0]);

    // Slice on 0..8.
    let x: Vec<f64> = (0..8).map(|v| v as f64).collect();
    let sl = |s: i64, e: i64, st: i64| {
        let i = |v: i64| T::new(vec![1], vec![v as f64]);
        ref_one(
            "Slice",
            t1(&x),
            vec![
                ("istarts", i(s)),
                ("iends", i(e)),
                ("iaxes", i(3)),
                ("isteps", i(st)),
            ],
            vec![],
            1,
        )[0]
        .data
        .clone()
    };
    assert_eq!(sl(1, 100, 3), [1.0, 4.0, 7.0]);
    assert_eq!(
        sl(-1, i64::MIN, -1),
        [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    );
    assert_eq!(sl(100, -100, -3), [7.0, 4.0, 1.0]);
    assert_eq!(sl(-3, -1, 1), [5.0, 6.0]);
    assert_eq!(sl(6, 2, -2), [6.0, 4.0]);
    assert!(sl(5, 5, 1).is_empty());

    // Split on 0..7: sizes input, and equal parts (last one smaller).
    let x7: Vec<f64> = (0..7).map(|v| v as f64).collect();
    let y = ref_one(
        "Split",
        t1(&x7),
        vec![("isplit", T::new(vec![2], vec![3.0, 4.0]))],
        vec![attr_int("axis", 3)],
        2,
    );
    assert_eq!(
        (y[0].data.clone(), y[1].data.clone()),
        (vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0, 6.0])
    );
    let y = ref_one("Split", t1(&x7[..6]), vec![], vec![attr_int("axis", -1)], 3);
    assert_eq!(y[2].data, [4.0, 5.0]);

    // Activations at and around their kinks.
    let xs = [-4.0, -3.0, -2.5, -1.0, 0.0, 1.0, 2.5, 3.0, 4.0];
    let y = ref_one("HardSigmoid", t1(&xs), vec![], vec![], 1);
    assert_close(&y[0].data, &[0.0, 0.0, 0.0, 0.3, 0.5, 0.7, 1.0, 1.0, 1.0]);
    let y = ref_one("HardSwish", t1(&xs), vec![], vec![], 1);
    let want: Vec<f64> = xs
        .iter()
        .map(|&v: &f64| v * ((v + 3.0) / 6.0).clamp(0.0, 1.0))
        .collect();
    assert_close(&y[0].data, &want);
    let y = ref_one("LeakyRelu", t1(&xs), vec![], vec![], 1);
    assert_close(&y[0].data[..1], &[-0.04]);
    assert_close(&y[0].data[4..], &[0.0, 1.0, 2.5, 3.0, 4.0]);
    let y = ref_one("Sigmoid", t1(&[0.0, 2.0]), vec![], vec![], 1);
    assert_close(&y[0].data, &[0.5, 1.0 / (1.0 + (-2.0f64).exp())]);
}

fn assert_close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (p, q) in a.iter().zip(b) {
        assert!((p - q).abs() < 1e-12, "{a:?} vs {b:?}");
    }
}

/// Backward of a one-node model on a given input with seed gradient all ones.
fn ref_one_grad(op: &str, x: T, attrs: Vec<onnx::pb::AttributeProto>, guided: bool) -> Vec<f64> {
    let mut b = GraphBuilder::new(14);
    let xi = b.input("x", &x.shape);
    let y = b.node(op, &[&xi], attrs);
    let rf = Ref::new(&b.build());
    let vals = rf.forward("x", &x);
    let g = T::new(vals[&y].shape.clone(), vec![1.0; vals[&y].data.len()]);
    rf.backward(&vals, "x", &y, g, guided).data
}

#[test]
fn reference_kink_conventions_and_guided_gating() {
    let xs = [-4.0, -3.0, -2.5, -1.0, 0.0, 1.0, 2.5, 3.0, 4.0];
    // HardSigmoid: alpha strictly inside (0, 1), else 0.
    let g = ref_one_grad("HardSigmoid", t1(&xs), vec![], false);
    assert_close(&g, &[0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.0, 0.0, 0.0]);
    // LeakyRelu: 1 where x > 0, else alpha (so alpha at 0).
    let g = ref_one_grad("LeakyRelu", t1(&xs), vec![attr_float("alpha", 0.25)], false);
    assert_close(&g, &[0.25, 0.25, 0.25, 0.25, 0.25, 1.0, 1.0, 1.0, 1.0]);
    // HardSwish: x/3 + 1/2 inside (-3, 3), 0 at and below -3, 1 at and above 3.
    let g = ref_one_grad("HardSwish", t1(&xs), vec![], false);
    let want: Vec<f64> = xs
        .iter()
        .map(|&v: &f64| {
            if v <= -3.0 {
                0.0
            } else if v >= 3.0 {
                1.0
            } else {
                v / 3.0 + 0.5
            }
        })
        .collect();
    for (a, b) in g.iter().zip(&want) {
        assert!((a - b).abs() < 1e-15, "{g:?} vs {want:?}");
    }
    // Non-ReLU nonlinearities are not gated in guided mode: a negative seed passes.
    let mut b = GraphBuilder::new(14);
    let x = b.input("x", &[1, 1, 1, 4]);
    let neg = b.init_f32("neg", &[1], vec![-1.0]);
    let s = b.node("Sigmoid", &[&x], vec![]);
    let h = b.node("HardSwish", &[&s], vec![]);
    let l = b.node("LeakyRelu", &[&h], vec![]);
    let y = b.node("Mul", &[&l, &neg], vec![]);
    let rf = Ref::new(&b.build());
    let vals = rf.forward("x", &t1(&[-1.0, 0.5, 1.0, 2.0]));
    let g1 = T::new(vec![1, 1, 1, 4], vec![1.0; 4]);
    let plain = rf.backward(&vals, "x", &y, g1.clone(), false);
    let guided = rf.backward(&vals, "x", &y, g1, true);
    assert_eq!(plain, guided);
    assert!(plain.data.iter().all(|&v| v < 0.0));
    // Whole nets without Relu/Clip: guided = plain; with them (detector): not.
    let mut rng = StdRng::seed_from_u64(63);
    let native = net_hard_native(&mut rng);
    let (det, sig) = net_detector(&mut rng);
    for (net, t, same) in [
        (&native, native.last_conv.clone(), true),
        (&det, sig, false),
    ] {
        let rf = Ref::new(&net.model);
        let input = onnx::real_inputs(&net.model)[0].name.clone();
        let x = rand_input(&mut rng, &net.input, 1.0);
        let vals = rf.forward(&input, &T::from_f32(&net.input, &x));
        let seed: Vec<f64> = vals[&t].data.iter().map(|v| v - 0.5).collect();
        let seed = T::new(vals[&t].shape.clone(), seed);
        let p = rf.backward(&vals, &input, &t, seed.clone(), false);
        let g = rf.backward(&vals, &input, &t, seed, true);
        assert_eq!(p == g, same);
    }
}

#[test]
fn reference_hardswish_decomposed_equals_native() {
    let mut rng = StdRng::seed_from_u64(64);
    let cases = op_cases();
    let native = cases.iter().find(|c| c.name == "HardSwish").unwrap();
    let dec = cases
        .iter()
        .find(|c| c.name.starts_with("HardSwish as"))
        .unwrap();
    let x = rand_input(&mut rng, &native.input, 4.0);
    let xt = T::from_f32(&native.input, &x);
    let mut grads = vec![];
    for c in [native, dec] {
        let rf = Ref::new(&c.model);
        let vals = rf.forward("x", &xt);
        let out = pre_softmax(&c.model);
        let g = T::new(vals[&out].shape.clone(), vec![1.0; vals[&out].data.len()]);
        grads.push((vals[&out].clone(), rf.backward(&vals, "x", &out, g, false)));
    }
    let close = |a: &T, b: &T| {
        a.data
            .iter()
            .zip(&b.data)
            .all(|(p, q)| (p - q).abs() < 1e-12)
    };
    assert!(close(&grads[0].0, &grads[1].0), "forward");
    assert!(close(&grads[0].1, &grads[1].1), "backward");
}

#[test]
fn reference_maxpool_routes_to_the_first_maximum() {
    let mp = |x: T, attrs| -> Vec<f64> {
        let mut b = GraphBuilder::new(13);
        let xi = b.input("x", &x.shape);
        let y = b.node("MaxPool", &[&xi], attrs);
        let rf = Ref::new(&b.build());
        let vals = rf.forward("x", &x);
        let g = T::new(
            vals[&y].shape.clone(),
            (1..=vals[&y].data.len()).map(|v| v as f64).collect(),
        );
        rf.backward(&vals, "x", &y, g, false).data
    };
    let k2 = || vec![attr_ints("kernel_shape", &[2, 2])];
    let sq = |v: [f64; 4]| T::new(vec![1, 1, 2, 2], v.to_vec());
    assert_eq!(mp(sq([1.0; 4]), k2()), [1.0, 0.0, 0.0, 0.0]);
    assert_eq!(mp(sq([0.0, 1.0, 1.0, 0.0]), k2()), [0.0, 1.0, 0.0, 0.0]);
    assert_eq!(mp(sq([0.0, 0.0, 1.0, 1.0]), k2()), [0.0, 0.0, 1.0, 0.0]);
    // Padding is -inf: a negative constant still wins over the pads; the first
    // in-bounds cell of each window gets it.
    let pads = vec![
        attr_ints("kernel_shape", &[2, 2]),
        attr_ints("pads", &[1, 1, 0, 0]),
    ];
    assert_eq!(
        mp(sq([-1.0; 4]), pads),
        [1.0 + 2.0 + 3.0 + 4.0, 0.0, 0.0, 0.0]
    );
    // 1×4 row, kernel 1×2 stride 1, all equal: window k → cell k.
    let row = T::new(vec![1, 1, 1, 4], vec![2.0; 4]);
    assert_eq!(
        mp(row, vec![attr_ints("kernel_shape", &[1, 2])]),
        [1.0, 2.0, 3.0, 0.0]
    );
}

// ---------------------------------------------------------------- real models

fn model_path(name: &str) -> PathBuf {
    data_dir().join("models").join(name)
}

/// The tench photo: resize the short side to 256, centre-crop 224, NCHW float 0–255 in RGB order.
fn photo_rgb() -> Vec<f32> {
    photo_rgb_file("n01440764_tench.JPEG")
}

/// A photo of `images/dev/`: resize the short side to 256, centre-crop 224, NCHW float
/// 0–255 in RGB order.
fn photo_rgb_file(file: &str) -> Vec<f32> {
    let img = image::open(data_dir().join("images/dev").join(file))
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

/// SqueezeNet preprocessing of the tench photo: BGR, minus mean B104 G117 R123.
fn photo_squeezenet() -> Vec<f32> {
    squeezenet_bgr(&photo_rgb())
}

/// SqueezeNet preprocessing: BGR, minus mean B104 G117 R123.
fn squeezenet_bgr(rgb: &[f32]) -> Vec<f32> {
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
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_tensorrt_safe(&guard, name);
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

/// Agreement of a response with a reference: (cosine, fraction of elements off by
/// more than 1 % of max |reference|).
fn agree(a: &[f32], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(&x, y)| x as f64 * y).sum();
    let na = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    let tol = 0.01 * b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    let off = a
        .iter()
        .zip(b)
        .filter(|&(&x, y)| (x as f64 - y).abs() > tol)
        .count();
    (dot / (na * nb).max(1e-300), off as f64 / a.len() as f64)
}

#[test]
fn squeezenet_on_a_saturated_photo_matches_reference() {
    // Half the gown photo is pure white: constant regions, so tied maxima at MaxPool.
    let rgb = photo_rgb_file("n02669723_academic_gown.JPEG");
    let hw = 224 * 224;
    let white = (0..hw)
        .filter(|&i| (0..3).all(|c| rgb[c * hw + i] == 255.0))
        .count();
    assert!(
        white * 5 > hw,
        "the photo should be saturated ({white} white pixels)"
    );
    let x = squeezenet_bgr(&rgb);
    let model = onnx::load(&model_path("squeezenet1.1.onnx")).unwrap();
    // The reference runs the original (opset 7) graph.
    let mut m32 = model.clone();
    onnx::fp16_to_fp32(&mut m32).unwrap();
    let rf = Ref::new(&m32);
    let input = onnx::real_inputs(&m32)[0].name.clone();
    let vals = rf.forward(&input, &T::from_f32(&SHAPE, &x));
    let orig = run(&runnable(&model), vec![(SHAPE.to_vec(), x.clone())]);
    let e = rel_err(&orig[0].1, &vals["softmaxout_1"].data);
    assert!(e < 1e-4, "reference forward differs from tract ({e})");
    let mut tied_total = 0;
    for n in rf.nodes.iter().filter(|n| n.op_type == "MaxPool") {
        let xin = &vals[&n.input[0]];
        let tied = onnx_ref::pool_windows(n, &xin.shape)
            .iter()
            .filter(|w| {
                let m = w
                    .iter()
                    .map(|&q| xin.data[q])
                    .fold(f64::NEG_INFINITY, f64::max);
                m > 0.0 && w.iter().filter(|&&q| xin.data[q] == m).count() > 1
            })
            .count();
        eprintln!(
            "{}: {tied} windows with a tied positive maximum",
            n.input[0]
        );
        tied_total += tied;
    }
    assert!(
        tied_total > 100,
        "the test needs tied maxima ({tied_total})"
    );
    let last = "conv10_2";
    let logits = "pool10_1";
    let l = &vals[logits];
    let top = (0..l.data.len())
        .max_by(|&a, &b| l.data[a].total_cmp(&l.data[b]))
        .unwrap();
    let mut onehot = T::zeros(&l.shape);
    onehot.data[top] = 1.0;
    let cases = [
        (
            Mode::Plain,
            Seed::Tensor(last.into()),
            last,
            vals[last].clone(),
        ),
        (
            Mode::Guided,
            Seed::Tensor(last.into()),
            last,
            vals[last].clone(),
        ),
        (Mode::Plain, Seed::Top1, logits, onehot),
    ];
    for (mode, seed, t, g) in cases {
        let guard = compile(
            &model,
            &CompileOptions {
                mode,
                seed: seed.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        let (_, resp) = guard_response(&guard, &x, &SHAPE, None);
        let want = rf.backward(&vals, &input, t, g, mode == Mode::Guided);
        assert!(want.data.iter().any(|&v| v != 0.0), "zero reference");
        let (cos, off) = agree(&resp, &want.data);
        eprintln!("{mode} {seed}: cos {cos:.6}, {:.4} % off", off * 100.0);
        assert!(
            cos >= 0.9999 && off <= 0.001,
            "{mode} {seed}: cos {cos}, {off} of the elements off by > 1 % of max"
        );
    }
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

#[test]
fn target_and_channel_seed_parse() {
    assert_eq!("ort".parse::<Target>().unwrap(), Target::OnnxRuntime);
    assert_eq!("tract".parse::<Target>().unwrap(), Target::Tract);
    assert!(
        "gpu"
            .parse::<Target>()
            .unwrap_err()
            .contains("tract or ort")
    );
    let s: Seed = "tensor:tower_0/keypoints[0]".parse().unwrap();
    assert_eq!(s, Seed::Channel("tower_0/keypoints".into(), vec![0]));
    assert_eq!(s.to_string(), "tensor:tower_0/keypoints[0]");
    // A ':' inside a tensor name stays part of the name.
    assert_eq!(
        "tensor:Relu6__90:0".parse::<Seed>().unwrap(),
        Seed::Tensor("Relu6__90:0".into())
    );
    assert!(
        "tensor:x[a]"
            .parse::<Seed>()
            .unwrap_err()
            .contains("bad channel")
    );
    let s: Seed = "tensor:k[0, 2]".parse().unwrap();
    assert_eq!(s, Seed::Channel("k".into(), vec![0, 2]));
    assert_eq!(s.to_string(), "tensor:k[0,2]");
    // Peaks: channels, then an optional threshold and window; '/' and '@' in names stay names.
    let p: Seed = "peaks:tower_0/keypoints[0,2]@0.25/5".parse().unwrap();
    assert_eq!(
        p,
        Seed::Peaks {
            tensor: "tower_0/keypoints".into(),
            channels: vec![0, 2],
            window: 5,
            threshold: 0.25,
        }
    );
    assert_eq!(p.to_string(), "peaks:tower_0/keypoints[0,2]@0.25/5");
    assert_eq!(p.to_string().parse::<Seed>().unwrap(), p);
    let all: Seed = "peaks:a@b[]".parse().unwrap();
    assert_eq!(
        all,
        Seed::Peaks {
            tensor: "a@b".into(),
            channels: vec![],
            window: 3,
            threshold: 0.3,
        }
    );
    for (bad, want) in [
        ("peaks:heat", "no [channels]"),
        ("peaks:[0]", "empty tensor name"),
        ("peaks:h[x]", "bad channel"),
        ("peaks:h[0]@high", "threshold \"high\""),
        ("peaks:h[0]@0.3/4", "window \"4\""),
        ("peaks:h[0]x", "unexpected \"x\""),
    ] {
        let e = bad.parse::<Seed>().unwrap_err();
        assert!(
            e.contains(want) && e.contains("expected peaks:NAME"),
            "{bad}: {e}"
        );
    }
}

/// A peaks seed on a tensor that is no heat map, or on channels it lacks, is one error.
#[test]
fn a_peaks_seed_off_its_tensor_is_refused() {
    let mut rng = StdRng::seed_from_u64(5);
    let (net, _) = net_detector(&mut rng);
    let model = net.model.clone();
    for (seed, want) in [
        (
            Seed::Peaks {
                tensor: "nowhere".into(),
                channels: vec![0],
                window: 3,
                threshold: 0.3,
            },
            "no tensor named",
        ),
        (
            Seed::Peaks {
                tensor: net.last_conv.clone(),
                channels: vec![100_000],
                window: 3,
                threshold: 0.3,
            },
            "out of range",
        ),
    ] {
        let e = compile(
            &model,
            &CompileOptions {
                seed,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn channel_seed_out_of_range_is_one_clear_error() {
    let mut rng = StdRng::seed_from_u64(70);
    let net = net_mobile(&mut rng);
    let e = compile(
        &net.model,
        &CompileOptions {
            seed: Seed::Channel(net.last_conv.clone(), vec![100_000]),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, CompileError::Seed(_)), "{e}");
    assert!(e.to_string().contains("out of range"), "{e}");
}
