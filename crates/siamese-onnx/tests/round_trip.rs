//! The exported file read back and evaluated node by node with plain candle ops (an
//! evaluator written from the ONNX operator definitions, knowing nothing of the tower),
//! against the tower's own embeddings: for the seed's tower, Snell's four-block encoder
//! (odd sizes too), the faces tower, symmetric padding, an embedding read from a hidden
//! layer, and embeddings averaged over test-time shifts. onnxruntime checks the same files in the CLI's tests.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use onnx_protobuf::{ModelProto, NodeProto};
use siamese_model::{ConvTower, Embedder, Padding, TowerConfig, TowerLayer};

/// Runs the graph of `model` on `images` and returns its output.
fn evaluate(model: &ModelProto, images: &Tensor) -> Tensor {
    let graph = model.graph.as_ref().expect("a graph");
    let mut values: HashMap<String, Tensor> = HashMap::new();
    for init in &graph.initializer {
        let dims: Vec<usize> = init.dims.iter().map(|&d| d as usize).collect();
        let t = match init.data_type {
            // FLOAT: the weights.
            1 => {
                let floats: Vec<f32> = init
                    .raw_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                Tensor::from_vec(floats, dims, &Device::Cpu).unwrap()
            }
            // INT64: pads, slices and shapes.
            7 => {
                let longs: Vec<i64> = init
                    .raw_data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                Tensor::from_vec(longs, dims, &Device::Cpu).unwrap()
            }
            other => panic!("initialiser {} of data type {other}", init.name),
        };
        values.insert(init.name.clone(), t);
    }
    values.insert(graph.input[0].name.clone(), images.clone());
    for node in &graph.node {
        let input = |i: usize| values[&node.input[i]].clone();
        let out = run_node(node, &input, node.input.len()).unwrap();
        values.insert(node.output[0].clone(), out);
    }
    values[&graph.output[0].name].clone()
}

fn ints(node: &NodeProto, name: &str) -> Vec<usize> {
    let a = node.attribute.iter().find(|a| a.name == name);
    a.map(|a| a.ints.iter().map(|&v| v as usize).collect())
        .unwrap_or_default()
}

fn run_node(
    node: &NodeProto,
    input: &dyn Fn(usize) -> Tensor,
    inputs: usize,
) -> candle_core::Result<Tensor> {
    let x = input(0);
    Ok(match node.op_type.as_str() {
        "Conv" => {
            let pads = ints(node, "pads"); // top, left, bottom, right
            let stride = ints(node, "strides")[0];
            let padded = x
                .pad_with_zeros(2, pads[0], pads[2])?
                .pad_with_zeros(3, pads[1], pads[3])?;
            let y = padded.conv2d(&input(1), 0, stride, 1, 1)?;
            if inputs > 2 {
                let bias = input(2);
                y.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)?
            } else {
                y
            }
        }
        "BatchNormalization" => {
            let eps = node
                .attribute
                .iter()
                .find(|a| a.name == "epsilon")
                .unwrap()
                .f;
            let c = x.dim(1)?;
            let shape: Vec<usize> = (0..x.rank()).map(|i| if i == 1 { c } else { 1 }).collect();
            let p = |i: usize| input(i).reshape(shape.clone());
            let normalised = x
                .broadcast_sub(&p(3)?)?
                .broadcast_div(&(p(4)? + f64::from(eps))?.sqrt()?)?;
            normalised.broadcast_mul(&p(1)?)?.broadcast_add(&p(2)?)?
        }
        "Relu" => x.relu()?,
        "MaxPool" => {
            let p = ints(node, "kernel_shape")[0];
            assert_eq!(ints(node, "strides"), [p, p]);
            let (b, c, h, w) = x.dims4()?;
            let (ho, wo) = (h / p, w / p);
            x.narrow(2, 0, ho * p)?
                .narrow(3, 0, wo * p)?
                .reshape((b, c, ho, p, wo, p))?
                .max(5)?
                .max(3)?
        }
        "Flatten" => x.flatten_from(1)?,
        "Gemm" => {
            assert_eq!(ints_i(node, "transB"), Some(1));
            let y = x.matmul(&input(1).t()?)?;
            if inputs > 2 {
                y.broadcast_add(&input(2))?
            } else {
                y
            }
        }
        "ReduceSumSquare" => {
            assert_eq!(ints(node, "axes"), [1]);
            x.sqr()?.sum_keepdim(1)?
        }
        "Add" => x.broadcast_add(&input(1))?,
        "Sqrt" => x.sqrt()?,
        "Div" => x.broadcast_div(&input(1))?,
        "Identity" => x,
        "Pad" => {
            let mode = node.attribute.iter().find(|a| a.name == "mode").unwrap();
            assert_eq!(mode.s, b"edge");
            let pads = input(1).to_vec1::<i64>()?;
            let rank = x.rank();
            assert_eq!(pads.len(), 2 * rank);
            let mut y = x;
            for axis in 0..rank {
                let (begin, end) = (pads[axis] as usize, pads[rank + axis] as usize);
                y = y.pad_with_same(axis, begin, end)?;
            }
            y
        }
        "Slice" => {
            let (starts, ends) = (input(1).to_vec1::<i64>()?, input(2).to_vec1::<i64>()?);
            let axes = input(3).to_vec1::<i64>()?;
            let mut y = x;
            for ((&start, &end), &axis) in starts.iter().zip(&ends).zip(&axes) {
                y = y.narrow(axis as usize, start as usize, (end - start) as usize)?;
            }
            y
        }
        "Concat" => {
            let axis = ints_i(node, "axis").unwrap() as usize;
            let parts: Vec<Tensor> = (0..inputs).map(input).collect();
            Tensor::cat(&parts, axis)?
        }
        "Reshape" => {
            let shape = input(1).to_vec1::<i64>()?;
            let known: i64 = shape.iter().filter(|&&d| d != -1).product();
            let dims: Vec<usize> = shape
                .iter()
                .map(|&d| {
                    if d == -1 {
                        x.elem_count() / known as usize
                    } else {
                        d as usize
                    }
                })
                .collect();
            x.reshape(dims)?
        }
        "ReduceMean" => {
            let axes = ints(node, "axes");
            assert_eq!(ints_i(node, "keepdims"), Some(0));
            assert_eq!(axes.len(), 1);
            x.mean(axes[0])?
        }
        other => panic!("the evaluator has no {other}"),
    })
}

fn ints_i(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// A tower of `config` whose batch-norm statistics and affine parameters are far from
/// their initial values (so a wrong batch norm in the graph shows).
fn tower(config: &TowerConfig, seed: u64) -> ConvTower {
    let (tower, varmap) = ConvTower::init(config, &Device::Cpu, seed).unwrap();
    let vars = varmap.data().lock().unwrap();
    for (i, (name, var)) in vars.iter().enumerate() {
        let shape = var.as_tensor().shape().clone();
        let n = shape.elem_count();
        let wave = |scale: f32, offset: f32| -> Vec<f32> {
            (0..n)
                .map(|j| offset + scale * ((j * 7 + i * 13) as f32 * 0.37).sin())
                .collect()
        };
        let values = if name.ends_with("running_var") {
            wave(0.4, 1.0)
        } else if name.ends_with("running_mean") || name.contains("bn") {
            wave(0.3, if name.ends_with("weight") { 1.0 } else { 0.0 })
        } else {
            continue;
        };
        var.set(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
            .unwrap();
    }
    tower
}

fn images(config: &TowerConfig, n: usize) -> Tensor {
    let (h, w) = (config.input_height, config.input_width);
    let values: Vec<f32> = (0..n * h * w)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    Tensor::from_vec(values, (n, 1, h, w), &Device::Cpu).unwrap()
}

fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn the_exported_graph_computes_the_towers_embeddings() {
    let mut hidden = TowerConfig {
        fc_widths: vec![64, 32],
        embed_from: TowerLayer::Hidden(1),
        ..TowerConfig::default()
    };
    hidden.normalize = true;
    let symmetric = TowerConfig {
        padding: Padding::Symmetric,
        input_height: 21,
        input_width: 17,
        normalize: true,
        ..TowerConfig::default()
    };
    let cases = [
        ("seed's tower", TowerConfig::default()),
        ("four-block", TowerConfig::four_block(28, 28, 64)),
        ("four-block, odd sizes", TowerConfig::four_block(19, 23, 16)),
        ("faces", TowerConfig::strided_four(56, 46, 64)),
        ("symmetric padding", symmetric),
        ("embedding from fc2", hidden.clone()),
        (
            "four-block, averaged over 9 shifts",
            TowerConfig {
                shift_average: 1,
                ..TowerConfig::four_block(28, 28, 64)
            },
        ),
        (
            "faces, averaged over 25 shifts",
            TowerConfig {
                shift_average: 2,
                ..TowerConfig::strided_four(56, 46, 64)
            },
        ),
        (
            "embedding from fc2, averaged over 9 shifts, back to unit length",
            TowerConfig {
                shift_average: 1,
                ..hidden
            },
        ),
    ];
    for (what, config) in cases {
        let tower = tower(&config, 3);
        let bytes = siamese_onnx::export(&tower, &[]).unwrap();
        let model = siamese_onnx::parse(&bytes).unwrap();
        // A batch size the export never saw (it fixes none).
        let x = images(&config, 5);
        let expected = tower.embed(&x).unwrap();
        let got = evaluate(&model, &x);
        assert_eq!(got.dims(), expected.dims(), "{what}");
        let diff = max_difference(&got, &expected);
        assert!(diff <= 1e-5, "{what}: max difference {diff}");
        // The graph's output is named and sized as documented.
        let graph = model.graph.as_ref().unwrap();
        assert_eq!(graph.output[0].name, siamese_onnx::OUTPUT, "{what}");
        assert_eq!(expected.dim(1).unwrap(), config.output_dim(), "{what}");
    }
}

#[test]
fn every_parameter_is_an_initialiser_bit_for_bit_and_dropout_is_left_out() {
    let config = TowerConfig::default();
    let tower = tower(&config, 1);
    let model = siamese_onnx::parse(&siamese_onnx::export(&tower, &[]).unwrap()).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let initialisers: HashMap<&str, &Vec<u8>> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), &t.raw_data))
        .collect();
    for (name, tensor) in tower.named_tensors() {
        let bytes: Vec<u8> = tensor
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(initialisers.get(name.as_str()), Some(&&bytes), "{name}");
    }
    assert!(graph.node.iter().all(|n| n.op_type != "Dropout"));
    assert_eq!(model.opset_import[0].version, siamese_onnx::OPSET);
    assert_eq!(model.ir_version, siamese_onnx::IR_VERSION);
    // The batch dimension is free, the rest fixed.
    let input = graph.input[0].type_.as_ref().unwrap();
    let text = format!("{input:?}");
    assert!(text.contains("DimParam(\"batch\")"), "{text}");
    assert!(model.doc_string.contains("/ 255"), "{}", model.doc_string);
}
