//! Exports a trained tower to ONNX, so it runs where this toolkit does not: onnxruntime
//! in Python, C++, a phone or a browser.
//!
//! ```
//! use siamese_model::{ConvTower, TowerConfig};
//!
//! let config = TowerConfig::default();
//! let (tower, _) = ConvTower::init(&config, &candle_core::Device::Cpu, 0).unwrap();
//! let metadata = [("threshold".to_string(), "0.5".to_string())];
//! let bytes = siamese_onnx::export(&tower, &metadata).unwrap();
//! let model = siamese_onnx::parse(&bytes).unwrap();
//! assert_eq!(model.graph.input[0].name, "images");
//! assert_eq!(model.metadata_props[0].value, "0.5");
//! ```
//!
//! The graph is the tower in inference mode, ending where [`Embedder::embed`] reads its
//! embedding: the head (unit length when the config normalises), or a hidden layer
//! scaled to unit length. Dropout is left out (it is off in inference), batch norm uses
//! the running statistics, and the weights are initialisers of raw little-endian f32.
//! Input `images` is `[N, C, H, W]` float32 with the batch size free; output
//! `embeddings` is `[N, D]`.
//!
//! A config with test-time shifts ([`siamese_model::TowerConfig::shift_average`]) puts
//! them in the graph as the tower makes them: edge padding, one crop per shift, the
//! tower on all crops at once, and the mean of each image's embeddings.
//!
//! Opset 17, IR version 8 (ONNX 1.12, 2022): every onnxruntime since 1.12 reads it.
//!
//! [`Embedder::embed`]: siamese_model::Embedder::embed

use std::collections::HashMap;

use candle_core::Tensor;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use siamese_model::{ConvTower, TowerLayer};

/// The operator set the graph uses.
pub const OPSET: i64 = 17;
/// The IR version written: ONNX 1.12's, the first with opset 17.
pub const IR_VERSION: i64 = 8;
/// The graph's input.
pub const INPUT: &str = "images";
/// The graph's output.
pub const OUTPUT: &str = "embeddings";
/// Added to the squared norm before its square root when an embedding is scaled to unit
/// length, as the tower does (an all-zero embedding stays finite).
const NORM_EPS: f32 = 1e-12;
/// Largest file protobuf can hold (2 GiB); larger models need external data files.
const MAX_MODEL_BYTES: usize = i32::MAX as usize;

/// What can stop an export.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The tower has a part this exporter does not write, or a tensor it lacks.
    #[error("cannot export the tower: {0}")]
    Unsupported(String),
    /// A tensor could not be read.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The file would not be valid ONNX bytes.
    #[error("cannot encode the ONNX model: {0}")]
    Encode(String),
}

/// The ONNX model bytes of `tower` in inference mode, with `metadata` as the model's
/// metadata properties (a threshold, where the model came from).
pub fn export(tower: &ConvTower, metadata: &[(String, String)]) -> Result<Vec<u8>, OnnxError> {
    let model = model(tower, metadata)?;
    let size = model.compute_size() as usize;
    if size > MAX_MODEL_BYTES {
        return Err(OnnxError::Unsupported(format!(
            "the model is {size} bytes, over protobuf's 2 GiB for one file"
        )));
    }
    model
        .write_to_bytes()
        .map_err(|e| OnnxError::Encode(e.to_string()))
}

/// Reads ONNX model bytes back (for checks and tools).
pub fn parse(bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    ModelProto::parse_from_bytes(bytes).map_err(|e| OnnxError::Encode(e.to_string()))
}

/// The graph being written: its nodes and initialisers, and the tower's tensors by name.
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    tensors: HashMap<String, Tensor>,
}

impl Builder {
    /// Adds the tower's tensor `name` as an initialiser of the same name.
    fn weight(&mut self, name: &str) -> Result<String, OnnxError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| OnnxError::Unsupported(format!("it has no tensor {name:?}")))?;
        let values: Vec<f32> = tensor.flatten_all()?.to_vec1()?;
        self.initializers
            .push(initializer(name, tensor.dims(), &values));
        Ok(name.to_string())
    }

    /// An int64 initialiser holding `values` (a 1-D constant: pads, shapes, slices).
    fn constant_i64(&mut self, name: &str, values: &[i64]) -> String {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = vec![values.len() as i64];
        t.data_type = DataType::INT64 as i32;
        t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(t);
        name.to_string()
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Adds a node of `op` on `inputs` whose one output is named `output`.
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attributes: Vec<AttributeProto>,
    ) -> String {
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.name = output.into();
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = vec![output.into()];
        node.attribute = attributes;
        self.nodes.push(node);
        output.into()
    }

    /// `x` scaled to unit length along axis 1: `x / sqrt(sum(x^2) + eps)`.
    fn unit_length(&mut self, x: &str, name: &str) -> String {
        let sum = self.node(
            "ReduceSumSquare",
            &[x],
            &format!("{name}.sum_sq"),
            vec![ints("axes", &[1]), int("keepdims", 1)],
        );
        let eps = format!("{name}.eps");
        self.initializers.push(initializer(&eps, &[], &[NORM_EPS]));
        let padded = self.node("Add", &[&sum, &eps], &format!("{name}.sum_sq_eps"), vec![]);
        let norm = self.node("Sqrt", &[&padded], &format!("{name}.norm"), vec![]);
        self.node("Div", &[x, &norm], name, vec![])
    }

    /// Inference batch norm of `x` with the running statistics of `prefix`.
    fn batch_norm(&mut self, x: &str, prefix: &str, eps: f64) -> Result<String, OnnxError> {
        let inputs = [
            self.weight(&format!("{prefix}.weight"))?,
            self.weight(&format!("{prefix}.bias"))?,
            self.weight(&format!("{prefix}.running_mean"))?,
            self.weight(&format!("{prefix}.running_var"))?,
        ];
        Ok(self.node(
            "BatchNormalization",
            &[x, &inputs[0], &inputs[1], &inputs[2], &inputs[3]],
            prefix,
            vec![float("epsilon", eps as f32)],
        ))
    }
}

/// The model of `tower`: the graph, its interface and the metadata.
fn model(tower: &ConvTower, metadata: &[(String, String)]) -> Result<ModelProto, OnnxError> {
    let c = tower.config();
    let mut b = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
        tensors: tower.named_tensors().into_iter().collect(),
    };
    // With test-time shifts the tower runs on every shifted view, and its output is
    // averaged after it.
    let averaged = c.shift_average > 0;
    let mut x = if averaged {
        shifted_views(&mut b, c)
    } else {
        INPUT.to_string()
    };
    let tower_output = if averaged { "views" } else { OUTPUT };
    for (i, g) in c.conv_layers().iter().enumerate() {
        let n = i + 1;
        let (pad_h, pad_w, _) = c.conv_geometry()[i];
        // ONNX's output size from these pads must be the tower's: it is, as TensorFlow's
        // SAME padding is never negative, but a wrong graph must not be written.
        let onnx_out = |input: usize, pads: (usize, usize)| {
            (input + pads.0 + pads.1)
                .checked_sub(g.kernel)
                .map(|v| v / g.stride + 1)
        };
        if onnx_out(g.h_in, pad_h) != Some(g.h_out) || onnx_out(g.w_in, pad_w) != Some(g.w_out) {
            return Err(OnnxError::Unsupported(format!(
                "conv{n}'s padding gives another output size in ONNX"
            )));
        }
        let weight = b.weight(&format!("conv{n}.weight"))?;
        let mut inputs = vec![x.clone(), weight];
        if b.has(&format!("conv{n}.bias")) {
            inputs.push(b.weight(&format!("conv{n}.bias"))?);
        }
        let k = g.kernel as i64;
        let s = g.stride as i64;
        let pads = [pad_h.0, pad_w.0, pad_h.1, pad_w.1].map(|p| p as i64);
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        x = b.node(
            "Conv",
            &refs,
            &format!("conv{n}"),
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &pads),
            ],
        );
        if c.conv_batch_norm {
            x = b.batch_norm(&x, &format!("conv{n}.bn"), c.batch_norm_eps)?;
        }
        x = b.node("Relu", &[&x], &format!("conv{n}.relu"), vec![]);
        if c.conv_pool > 1 {
            // Floor rounding (ceil_mode 0, no padding), as the tower crops to whole
            // windows.
            let p = c.conv_pool as i64;
            x = b.node(
                "MaxPool",
                &[&x],
                &format!("conv{n}.pool"),
                vec![ints("kernel_shape", &[p, p]), ints("strides", &[p, p])],
            );
        }
    }
    // Channels first, as the tower flattens (fc1's weight columns are in that order).
    x = b.node("Flatten", &[&x], "flatten", vec![int("axis", 1)]);
    let hidden = c.fc_widths.len();
    let mut output = None;
    for j in 0..hidden {
        let n = j + 1;
        x = gemm(&mut b, &x, n)?;
        x = b.node("Relu", &[&x], &format!("fc{n}.relu"), vec![]);
        if c.batch_norm {
            x = b.batch_norm(&x, &format!("bn{n}"), c.batch_norm_eps)?;
        }
        if c.embed_from == TowerLayer::Hidden(j) {
            output = Some(b.unit_length(&x, tower_output));
            break;
        }
    }
    let mut output = match output {
        Some(o) => o,
        None => {
            let head = gemm(&mut b, &x, hidden + 1)?;
            if c.normalize {
                b.unit_length(&head, tower_output)
            } else {
                b.node("Identity", &[&head], tower_output, vec![])
            }
        }
    };
    if averaged {
        output = mean_of_views(&mut b, &output, c);
    }
    let mut graph = GraphProto::new();
    graph.name = "siamese_tower".into();
    graph.node = b.nodes;
    graph.initializer = b.initializers;
    let dims = [c.input_channels, c.input_height, c.input_width].map(|d| Dim::Fixed(d as i64));
    graph.input = vec![value_info(INPUT, &[&[Dim::Batch], &dims[..]].concat())];
    graph.output = vec![value_info(
        &output,
        &[Dim::Batch, Dim::Fixed(c.output_dim() as i64)],
    )];
    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.producer_name = "siamese".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.doc_string = doc_string(tower);
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    model.opset_import = vec![opset];
    model.metadata_props = metadata
        .iter()
        .map(|(k, v)| {
            let mut entry = StringStringEntryProto::new();
            entry.key = k.clone();
            entry.value = v.clone();
            entry
        })
        .collect();
    model.graph = protobuf::MessageField::some(graph);
    Ok(model)
}

/// The [`siamese_model::TowerConfig::shift_average`] views of the input, as the tower
/// makes them: the images padded by `r` repeated edge pixels on each side, one crop per
/// offset `(dy, dx)` in the tower's order, stacked along the batch axis (`[V * N, C, H,
/// W]`, view-major).
fn shifted_views(b: &mut Builder, c: &siamese_model::TowerConfig) -> String {
    let r = c.shift_average as i64;
    let pads = b.constant_i64("views.pads", &[0, 0, r, r, 0, 0, r, r]);
    let padded = b.node(
        "Pad",
        &[INPUT, &pads],
        "views.padded",
        vec![string("mode", "edge")],
    );
    let axes = b.constant_i64("views.axes", &[2, 3]);
    let (h, w) = (c.input_height as i64, c.input_width as i64);
    let crops: Vec<String> = c
        .shift_offsets()
        .into_iter()
        .enumerate()
        .map(|(i, (dy, dx))| {
            let (top, left) = (r + dy as i64, r + dx as i64);
            let starts = b.constant_i64(&format!("views.{i}.starts"), &[top, left]);
            let ends = b.constant_i64(&format!("views.{i}.ends"), &[top + h, left + w]);
            b.node(
                "Slice",
                &[&padded, &starts, &ends, &axes],
                &format!("views.{i}"),
                vec![],
            )
        })
        .collect();
    let refs: Vec<&str> = crops.iter().map(String::as_str).collect();
    b.node("Concat", &refs, "views.stacked", vec![int("axis", 0)])
}

/// The mean over the views of each image of the tower's output `x` (`[V * N, D]`,
/// view-major), back to unit length when the tower's embeddings are: the graph's output.
fn mean_of_views(b: &mut Builder, x: &str, c: &siamese_model::TowerConfig) -> String {
    let views = c.shift_offsets().len() as i64;
    let shape = b.constant_i64("views.shape", &[views, -1, c.output_dim() as i64]);
    let grouped = b.node("Reshape", &[x, &shape], "views.grouped", vec![]);
    let name = if c.unit_length_embeddings() {
        "views.mean"
    } else {
        OUTPUT
    };
    let mean = b.node(
        "ReduceMean",
        &[&grouped],
        name,
        vec![ints("axes", &[0]), int("keepdims", 0)],
    );
    if c.unit_length_embeddings() {
        b.unit_length(&mean, OUTPUT)
    } else {
        mean
    }
}

/// `x W^T + b` for the tower's fully connected layer `fc{n}`.
fn gemm(b: &mut Builder, x: &str, n: usize) -> Result<String, OnnxError> {
    let weight = b.weight(&format!("fc{n}.weight"))?;
    let mut inputs = vec![x.to_string(), weight];
    if b.has(&format!("fc{n}.bias")) {
        inputs.push(b.weight(&format!("fc{n}.bias"))?);
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    Ok(b.node("Gemm", &refs, &format!("fc{n}"), vec![int("transB", 1)]))
}

/// What the model expects and gives, for whoever opens the file.
fn doc_string(tower: &ConvTower) -> String {
    let c = tower.config();
    let reads = match c.embed_from {
        TowerLayer::Head if c.normalize => "the head, scaled to unit length".to_string(),
        TowerLayer::Head => "the head".to_string(),
        TowerLayer::Hidden(j) => format!("fc{}, scaled to unit length", j + 1),
    };
    let reads = match c.shift_average {
        0 => reads,
        r => format!(
            "{reads}, averaged over the {} shifts of the image by up to {r} pixels each way \
             (edges repeated){}",
            c.shift_offsets().len(),
            if c.unit_length_embeddings() {
                " and scaled back to unit length"
            } else {
                ""
            }
        ),
    };
    format!(
        "A siamese tower (one side of a Siamese network) in inference mode. Input `{INPUT}`: \
         float32 [N, {}, {}, {}], grayscale pixels scaled to [0, 1] (byte value / 255), \
         images resized to {}x{} (height x width) as the checkpoint's preprocessing says. \
         Output `{OUTPUT}`: float32 [N, {}], read from {reads}. Two images are the same class \
         when the Euclidean distance of their embeddings is at most the `threshold` metadata \
         property (when the model has one).",
        c.input_channels,
        c.input_height,
        c.input_width,
        c.input_height,
        c.input_width,
        c.output_dim()
    )
}

/// A dimension of a graph input or output.
#[derive(Clone, Copy)]
enum Dim {
    /// The batch size, free.
    Batch,
    /// A size the model fixes.
    Fixed(i64),
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .map(|d| {
            let mut dim = tensor_shape_proto::Dimension::new();
            dim.value = Some(match d {
                Dim::Batch => tensor_shape_proto::dimension::Value::DimParam("batch".into()),
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
            });
            dim
        })
        .collect();
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = DataType::FLOAT as i32;
    tensor.shape = protobuf::MessageField::some(shape);
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tensor));
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    info.type_ = protobuf::MessageField::some(ty);
    info
}

/// A float32 initialiser, its values as raw little-endian bytes.
fn initializer(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.data_type = DataType::FLOAT as i32;
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

fn int(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

fn string(name: &str, value: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = value.as_bytes().to_vec();
    a
}

fn float(name: &str, value: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = value;
    a
}
