//! Integer convolution: the quantised models' `DequantizeLinear → Conv → QuantizeLinear`
//! triples run as one 8-bit × 8-bit → 32-bit operator instead of an f32 convolution between a
//! dequantise and a quantise.
//!
//! How it is reached: [`fuse_qdq_convs`] rewrites the ONNX graph before tract parses it, turning
//! each triple whose weights, scales and zero points are constants into one `FerroscopeQConv`
//! node (the inputs and attributes of ONNX's `QLinearConv`); [`onnx`] is tract's ONNX front end
//! with that node type registered. The node becomes [`QConv`], a tract operator whose weights
//! are packed once at load for the kernel this CPU runs.
//!
//! Guarantees:
//! - **Same arithmetic as the QDQ graph**: `y = saturate(round_half_even(acc · sx·sw[m]/sy) +
//!   zy)` with `acc` the exact 32-bit sum of `(x − zx)·w` plus the bias; padding contributes
//!   nothing (it holds the input's zero point). Only the rounding of ties in the f32 product can
//!   differ from an f32 convolution's, by one step of the output's scale.
//! - **Integer kernels where they pay**: VNNI (`vpdpbusd`, 32 multiply-adds per instruction at
//!   256 bits; AVX-512 VNNI or AVX-VNNI) on x86-64, or `vpmaddubsw`/`vpmaddwd` (32 per 3) on
//!   x86-64 cores with AVX2 only; `SDOT` (16 per instruction) on aarch64 cores
//!   with the dot-product extension (Cortex-A55/A76/A78); `SMULL`/`SMLAL2`/`SADALP` (16 per 3
//!   instructions) on the other aarch64 cores (Cortex-A53/A72); `VMULL`/`VMLAL`/`VPADAL` (the
//!   same 16 per 3, inline assembly) on armv7 cores with NEON (Cortex-A8: BeagleBone Black).
//!   The choice is made once, at load, and named by [`QConv::kernel`]; elsewhere nothing is
//!   fused ([`fused_on_this_cpu`]).
//!   A portable kernel computes the same sums, for the tests and `FERROSCOPE_PORTABLE_KERNEL`.
//! - **Pixels in the lanes where channels are few**: on the x86 kernels, a
//!   convolution at stride 1 with at most `PLANE_MAX_CH` (8) output channels per group from one
//!   input channel per group (filter banks, depthwise filters), or from up to `PLANE_MAX_CG`
//!   (16) over more than one tap (neu_segment's full-resolution convolutions; up to
//!   `PLANE_MAX_CG_FEW` (32) for at most 2 output channels), runs on the plane
//!   kernel (`QConv::run_plane`): 16 output pixels per register (8 on AVX2 and AVX-VNNI,
//!   `QConv::run_plane_ymm`) over 4-byte words of the padded planes, no im2col and no store
//!   per pixel: windows of 4 taps of the one channel, or 4 channels of one pixel. On the aarch64
//!   kernels a convolution at stride 1 of more than one tap with at most 4 output channels per
//!   group (8 in two passes from up to `PLANE_MAX_CG` input channels) runs on the NEON plane
//!   kernel (`QConv::run_plane_arm`): 16 output pixels per register, one tap of every input
//!   plane after another, products in 16 bits widened into 32.
//! - **Channels-last between convolutions**: a convolution whose every consumer is one hands
//!   its output over channels-last and in the consumer's byte domain ([`chain_channels_last`]),
//!   so only the model's first convolution transposes its input.
//! - **Requantisation as vectors**: eight channels of one pixel at a time (NEON on aarch64 and,
//!   with the armv7 kernel, on armv7); on aarch64 a whole tile of 4 pixels × 8 channels in
//!   registers, into channel planes as one 4-byte store per channel (`QConv::store_tile_arm`).
//! - **Transpositions as vectors on aarch64**: channel planes go into the direct path's padded
//!   channels-last map 16 pixels × 16 channels at a time in registers (`planes_row_neon`).
//! - **No allocation per run but the output**: the transposed input and the im2col block are
//!   scratch buffers kept in the operator's state, sized at the first run.
//! - Every kernel, the requantisation and the hand-off are tested against the convolution's
//!   definition on random data (`tests` below; on ARM by `tests/cross.sh` under qemu).
//! - Only what it can run exactly is rewritten (2-D, u8 activations with one scale, i8 weights
//!   with zero zero points, constant scales); everything else stays as the file has it.
//!
//! This file is the operator from wiring to requantisation, and its tests: the im2col
//! block and the tile loop share one buffer contract (`RUN_SLACK`, rows filled in order), so
//! they stay together; the graph rewrite is in `fuse.rs`, the kernels in `kernels.rs`.

use anyhow::{Context, Result};
use tract_onnx::pb::{ModelProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

mod fuse;
mod kernels;

pub use fuse::fuse_qdq_convs;
use kernels::{tile_portable, Rows};

/// The node type [`fuse_qdq_convs`] writes and [`onnx`] registers.
pub const FUSED_OP: &str = "FerroscopeQConv";

/// Bytes of the reduction (channels × kernel taps) per step of every kernel: K is padded to a
/// multiple of it with zero weights, so no kernel needs a tail loop.
const K_STEP: usize = 16;
/// Output channels per kernel tile (padded with zero weights).
const M_TILE: usize = 8;
/// Output pixels per kernel tile.
const P_TILE: usize = 4;
/// Pixels per block of the channels-first → channels-last transposition: 256 pixels of up to
/// 64 channels are 16 KiB, within every board's L1 data cache.
const TRANSPOSE_BLOCK: usize = 256;
/// Output channels per 512-bit register of the x86 broadcast kernel (16 lanes of i32).
const ZMM_CH: usize = 16;
/// Bias and multiplier entries past the last padded channel: a tile reads whole rows of
/// [`M_TILE`] or [`ZMM_CH`] channels from its first one, at most `ZMM_CH - 4` past the end of
/// `mgp` (a multiple of 4).
const CH_SLACK: usize = ZMM_CH;
/// Output channels per group at most for the plane kernel ([`QConv::plane_weights`]) on
/// AVX-512: 8 channels × 3 registers of 16 pixels fill 24 of the 32 registers with sums.
const PLANE_MAX_CH: usize = 8;
/// Output channels per group at most for the plane kernel on 256 bits
/// ([`QConv::run_plane_ymm`]): two passes of 8 over the same windows, so a model's first
/// convolution (one input channel, 16 outputs) skips the im2col of its thin input.
const PLANE_MAX_CH_YMM: usize = 16;
/// Input channels per group at most for the x86 plane kernel when it reads several planes
/// (with at most [`PLANE_MAX_CH`] output channels, one pass, and more than one tap), and for the
/// aarch64 one past 4 output channels ([`QConv::arm_plane_fits`]): below one
/// [`K_STEP`] of channels a pixel's im2col row is mostly one tap's few bytes and each tile
/// requantises 4 pixels of at most 8 channels, so at full resolution the rows and stores, not
/// the multiply-adds, took the time (neu_segment 1.2.0's last convolution, 9 → 1 over 3×3 at
/// 200×200, a third of its inference on AVX2). Their words hold 4 channels of a pixel (2 on
/// AVX2), so the padded planes take one byte a pixel per channel (two on AVX2).
const PLANE_MAX_CG: usize = K_STEP;
/// Input channels per group at most for the x86 plane kernel when it reads several planes for
/// at most [`PLANE_FEW_CH`] output channels: past [`PLANE_MAX_CG`] the plane kernel's work
/// grows with every output channel while im2col's rows serve them all, so it pays only for
/// very few. Measured (`ferroscope bench --model-only --precision int8`, one thread, AVX-512
/// VNNI, 3×3 at 200×200 inside a three-convolution model): 17 → 1 2.76 → 1.69 ms, 24 → 1 2.12
/// → 1.78, 32 → 1 2.19 → 2.07, 32 → 2 2.25 → 2.19, 24 → 2 even; 24 → 8 2.30 → 2.50 and 32 → 4
/// 2.24 → 2.47 slower, so not taken.
const PLANE_MAX_CG_FEW: usize = 2 * K_STEP;
/// Output channels per group at most for [`PLANE_MAX_CG_FEW`].
const PLANE_FEW_CH: usize = 2;
/// What one group of a plane-kernel convolution reads and where: the group's input planes,
/// their size, the output size, the group and its output channels.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type PlaneIo<'a> = (&'a [u8], [usize; 2], [usize; 2], usize, usize);
/// Output pixels per im2col block: 64 rows of at most a few KiB stay in L1/L2 while the tile
/// loops reuse them for every output channel.
const P_BLOCK: usize = 64;

/// tract's ONNX front end with [`FUSED_OP`] registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register.insert(FUSED_OP, build_fused);
    onnx
}

/// Read an ONNX model and fuse its quantised convolutions (see the module doc). Returns the
/// rewritten model and how many convolutions were fused.
///
/// The convolutions are fused only where [`fused_on_this_cpu`] says so; elsewhere the model is
/// returned as read and tract runs it as before.
///
/// `check` sees the file's graph before anything in it is loaded (the engine refuses
/// oversized tensors there).
pub fn read_fused(bytes: &[u8], check: impl FnOnce(&ModelProto) -> Result<()>) -> Result<(ModelProto, usize)> {
    let mut proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .context("not a readable ONNX model")?;
    check(&proto)?;
    if !fused_on_this_cpu() {
        return Ok((proto, 0));
    }
    let fused = fuse_qdq_convs(&mut proto)?;
    Ok((proto, fused))
}

/// Whether this CPU runs the quantised convolutions as [`QConv`]: where it has an integer
/// kernel of its own (x86-64 VNNI, or AVX2; aarch64 `SDOT`, or `SMLAL` on the cores without the dot
/// product; armv7 with NEON), or where `FERROSCOPE_PORTABLE_KERNEL` asks for the portable
/// kernel. The portable kernel retires more instructions than tract's f32 kernels
/// (`tests/arm_cost.sh`), so elsewhere (x86-64 without AVX2, armv7 without NEON) the QDQ graph
/// stays as the file has it.
pub fn fused_on_this_cpu() -> bool {
    Kernel::detect() != Kernel::Portable || std::env::var_os("FERROSCOPE_PORTABLE_KERNEL").is_some()
}

/// Hand activations from one [`QConv`] to the next channels-last, in the kernel's domain: where
/// every consumer of a convolution's output is a one-group [`QConv`] (and the output is not
/// the model's), the producer writes `[n][h][w][c]` with the sign bit already flipped for a
/// signed kernel, and the consumers skip their transposition. The tensor between them keeps
/// its NCHW shape for tract; only the two operators read its bytes, and both know the order.
/// Run on the optimised model, after which no pass rewrites the graph. Returns how many
/// outputs were handed over so.
pub fn chain_channels_last(model: &mut TypedModel) -> TractResult<usize> {
    let outputs = model.output_outlets()?.to_vec();
    let mut chained = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        // The plane kernel reads and writes channel planes: its convolutions stay out of chains.
        if node.op_as::<QConv>().is_none_or(|c| c.plane_mv > 0) || outputs.contains(&OutletId::new(id, 0)) {
            continue;
        }
        let succs: Vec<InletId> = node.outputs[0].successors.iter().copied().collect();
        let all_qconv = !succs.is_empty()
            && succs.iter().all(|s| {
                s.slot == 0
                    && model
                        .node(s.node)
                        .op_as::<QConv>()
                        .is_some_and(|c| c.geometry.group == 1 && c.plane_mv == 0)
            });
        if !all_qconv {
            continue;
        }
        if let Some(op) = model.node_mut(id).op_as_mut::<QConv>() {
            op.output_hwc = true;
        }
        for s in succs {
            if let Some(op) = model.node_mut(s.node).op_as_mut::<QConv>() {
                op.input_hwc = true;
            }
        }
        chained += 1;
    }
    Ok(chained)
}

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Geometry {
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    /// top, left, bottom, right
    pads: [usize; 4],
    group: usize,
}

/// Largest kernel side, stride, dilation, pad or group count a fused convolution may declare:
/// far above any model's (the anomaly filter banks' 21×21 kernels are the largest shipped),
/// low enough that no product of them overflows.
const MAX_GEOMETRY: usize = 4096;

impl Geometry {
    fn output_hw(&self, h: usize, w: usize) -> TractResult<[usize; 2]> {
        let mut out = [0; 2];
        for (a, size) in [h, w].into_iter().enumerate() {
            let span = self.dilations[a] * (self.kernel[a] - 1) + 1;
            let padded = size + self.pads[a] + self.pads[a + 2];
            if padded < span {
                bail!("{FUSED_OP}: input {h}x{w} smaller than the kernel");
            }
            out[a] = (padded - span) / self.strides[a] + 1;
        }
        Ok(out)
    }
}

fn build_fused(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let two = |name: &str, default: usize| -> TractResult<[usize; 2]> {
        Ok(match node.get_attr_opt_tvec::<usize>(name)? {
            Some(v) if v.len() == 2 => [v[0], v[1]],
            Some(v) => bail!("{FUSED_OP} {}: attribute {name} has {} values", node.name, v.len()),
            None => [default, default],
        })
    };
    let kernel = two("kernel_shape", 0)?;
    let pads = match node.get_attr_opt_tvec::<usize>("pads")? {
        Some(v) if v.len() == 4 => [v[0], v[1], v[2], v[3]],
        Some(v) => bail!("{FUSED_OP} {}: attribute pads has {} values", node.name, v.len()),
        None => [0; 4],
    };
    let geometry = Geometry {
        kernel,
        strides: two("strides", 1)?,
        dilations: two("dilations", 1)?,
        pads,
        group: node.get_attr_opt::<i64>("group")?.unwrap_or(1) as usize,
    };
    // Damaged files reach here too (`tests/generated_inputs.rs`): every quantity divides or
    // multiplies later, so each must be positive and small.
    let g = &geometry;
    let sane = |v: usize| (1..=MAX_GEOMETRY).contains(&v);
    if !(g.kernel.iter().chain(&g.strides).chain(&g.dilations).all(|&v| sane(v))
        && g.pads.iter().all(|&p| p <= MAX_GEOMETRY)
        && sane(g.group))
    {
        bail!("{FUSED_OP} {}: geometry out of range: {g:?}", node.name);
    }
    Ok((
        expand(FusedExpansion {
            geometry,
            has_bias: node.input.len() == 9,
        }),
        vec![],
    ))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct FusedExpansion {
    geometry: Geometry,
    has_bias: bool,
}

fn konst(model: &TypedModel, outlet: OutletId, what: &str) -> TractResult<Arc<Tensor>> {
    model
        .outlet_fact(outlet)?
        .konst
        .clone()
        .with_context(|| format!("{FUSED_OP}: {what} must be a constant"))
}

impl Expansion for FusedExpansion {
    fn name(&self) -> StaticName {
        FUSED_OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 8 + self.has_bias as usize)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, u8::datum_type())?;
        s.equals(&outputs[0].datum_type, u8::datum_type())?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[3].shape[0])?;
        let g = self.geometry.clone();
        s.given_2(&inputs[0].shape[2], &inputs[0].shape[3], move |s, h, w| {
            if let (Ok(h), Ok(w)) = (h.to_usize(), w.to_usize()) {
                let [oh, ow] = g.output_hw(h, w)?;
                s.equals(&outputs[0].shape[2], oh.to_dim())?;
                s.equals(&outputs[0].shape[3], ow.to_dim())?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let f32s = |t: &Tensor| -> TractResult<Vec<f32>> {
            Ok(t.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        };
        let sx = f32s(&*konst(model, inputs[1], "x_scale")?)?;
        let zx = konst(model, inputs[2], "x_zero_point")?;
        let w = konst(model, inputs[3], "w")?;
        let sw = f32s(&*konst(model, inputs[4], "w_scale")?)?;
        let sy = f32s(&*konst(model, inputs[6], "y_scale")?)?;
        let zy = konst(model, inputs[7], "y_zero_point")?;
        let bias = if self.has_bias {
            let b = konst(model, inputs[8], "bias")?;
            Some(b.cast_to::<i32>()?.try_as_plain_ram()?.as_slice::<i32>()?.to_vec())
        } else {
            None
        };
        let zx = zx.try_as_plain_ram()?.as_slice::<u8>()?[0];
        let zy = zy.try_as_plain_ram()?.as_slice::<u8>()?[0];
        let wshape = w.shape().to_vec();
        let w = w.try_as_plain_ram()?.as_slice::<i8>()?.to_vec();
        let c_in = model.outlet_fact(inputs[0])?.shape[1].to_usize()?;
        let op = QConv::with_kernel(
            Kernel::detect(),
            self.geometry.clone(),
            c_in,
            &wshape,
            &w,
            sx[0],
            zx,
            &sw,
            sy[0],
            zy,
            bias.as_deref(),
        )?;
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// The data each kernel reads: the bytes of the input as unsigned (x86-64) or with the sign
/// bit flipped to signed (ARM's `SDOT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// AVX-512 VNNI, `vpdpbusd` on 256-bit registers: u8 × i8.
    X86Vnni,
    /// AVX-VNNI, the same `vpdpbusd` in its VEX encoding (cores without AVX-512 VNNI).
    X86AvxVnni,
    /// AVX2 without VNNI: `vpmaddubsw` + `vpmaddwd`, u8 × i8, for weights within ±64.
    X86Avx2,
    /// aarch64 `SDOT` by element: i8 × i8.
    ArmDot,
    /// aarch64 without the dot product: `SMULL`/`SMLAL2` into 16 bits, `SADALP` into 32: i8 × i8.
    ArmSmlal,
    /// armv7 with NEON: `VMULL.S8`/`VMLAL.S8` into 16 bits, `VPADAL.S16` into 32: i8 × i8.
    ArmV7Neon,
    /// Portable, vectorised by the compiler; u8 × i8 on x86-64, i8 × i8 elsewhere.
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        if std::env::var_os("FERROSCOPE_PORTABLE_KERNEL").is_some() {
            return Kernel::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl") {
                return Kernel::X86Vnni;
            }
            if std::arch::is_x86_feature_detected!("avxvnni") {
                return Kernel::X86AvxVnni;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::X86Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return Kernel::ArmDot;
            }
            return Kernel::ArmSmlal;
        }
        #[cfg(target_arch = "arm")]
        {
            if kernels::armv7::has_neon() {
                return Kernel::ArmV7Neon;
            }
        }
        #[allow(unreachable_code)]
        Kernel::Portable
    }

    /// The input bytes are signed (sign bit flipped) for this kernel.
    fn signed_input(self) -> bool {
        match self {
            Kernel::X86Vnni | Kernel::X86AvxVnni | Kernel::X86Avx2 => false,
            Kernel::ArmDot | Kernel::ArmSmlal | Kernel::ArmV7Neon => true,
            Kernel::Portable => !cfg!(target_arch = "x86_64"),
        }
    }
}

/// One fused quantised convolution (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct QConv {
    geometry: Geometry,
    c_in: usize,
    m_out: usize,
    /// K = kernel taps × input channels per group, padded to [`K_STEP`].
    kp: usize,
    /// Input channels per group as the direct path reads them: `cg`, or on aarch64 `cg`
    /// padded to [`K_STEP`] (12 → 16, 24 → 32; see [`QConv::padded_channels`]), the pad
    /// channels weighing zero, so that no im2col runs.
    cgp: usize,
    /// Output channels per group, padded to 4 (one `SDOT` register of channels).
    mgp: usize,
    kernel: Kernel,
    /// Weights per group, per padded output channel: `kp` bytes in (ky, kx, c) order.
    w_rows: Vec<i8>,
    /// The same weights in the order the kernel reads them, where it has its own: `SDOT`
    /// per group, per 4 output channels, per 4 k, 16 bytes (channel-major); the x86 broadcast
    /// kernel per group, per [`ZMM_CH`] output channels, per 4 k, 64 bytes (channel-major).
    w_packed: Vec<i8>,
    /// Bias with the zero points folded in, per padded output channel (and [`CH_SLACK`] more,
    /// so every tile reads whole rows).
    bias: Vec<i32>,
    /// sx·sw/sy per padded output channel (and [`CH_SLACK`] more).
    mult: Vec<f32>,
    zy: u8,
    /// The byte that stands for zero input in the kernel's domain (padding).
    pad_byte: u8,
    /// The input arrives channels-last and already in the kernel's domain, from a [`QConv`]
    /// that wrote it so ([`chain_channels_last`]).
    input_hwc: bool,
    /// Write the output channels-last in the consumers' kernel domain: set only when every
    /// consumer is a [`QConv`] reading it so ([`chain_channels_last`]).
    output_hwc: bool,
    /// Output channels per tile of the plane kernel (1, 2, 4 or 8; 0: not used), see
    /// [`QConv::plane_weights`].
    plane_mv: usize,
    /// The plane kernel's weights: per group, pass, plane of words, kernel row and word of it
    /// ([`QConv::plane_layout`]), `plane_mv` words of the weights that meet that word's bytes
    /// (taps past the row, input channels past the group's and output channels past the
    /// group's zero).
    w_plane: Vec<i32>,
    /// The aarch64 plane kernel adds the products of two taps in 16 bits (no channel weighs
    /// both taps of a pair −128), see [`QConv::arm_plane_weights`].
    plane_pairs: bool,
    /// The aarch64 plane kernel's weights: per group, pass of `plane_mv` channels and tap (input
    /// channel, kernel row, column; an even count, the last one zero when odd), `plane_mv` bytes
    /// (channels past the group's zero).
    w_taps: Vec<i8>,
}

impl Eq for QConv {}

impl QConv {
    /// The operator for `kernel` (one the CPU runs: [`Kernel::detect`] at load, any for tests),
    /// its weights packed for it.
    #[allow(clippy::too_many_arguments)]
    fn with_kernel(
        kernel: Kernel,
        geometry: Geometry,
        c_in: usize,
        wshape: &[usize],
        w: &[i8],
        sx: f32,
        zx: u8,
        sw: &[f32],
        sy: f32,
        zy: u8,
        bias: Option<&[i32]>,
    ) -> TractResult<QConv> {
        // SMLAL and VMLAL sum two products in 16 bits: no weight may be −128; AVX2's
        // `vpmaddubsw` sums two u8 × i8 products in 16 bits: no weight beyond ±64 (its plane
        // kernel multiplies in 16 bits and takes every weight). The portable kernel runs such a
        // convolution instead.
        let in_16_bits = match kernel {
            Kernel::ArmSmlal => {
                let (cg, mg) = (wshape[1], wshape[0] / geometry.group.max(1));
                QConv::arm_plane_fits(kernel, &geometry, cg, mg) || !w.contains(&i8::MIN)
            }
            Kernel::ArmV7Neon => !w.contains(&i8::MIN),
            #[cfg(target_arch = "x86_64")]
            Kernel::X86Avx2 => {
                let (cg, mg) = (wshape[1], wshape[0] / geometry.group.max(1));
                QConv::plane_fits(kernel, &geometry, cg, mg)
                    || w.iter()
                        .all(|v| v.unsigned_abs() <= kernels::x86::AVX2_MAX_WEIGHT as u8)
            }
            _ => true,
        };
        let kernel = if in_16_bits { kernel } else { Kernel::Portable };
        let [m_out, cg, kh, kw] = [wshape[0], wshape[1], wshape[2], wshape[3]];
        let group = geometry.group;
        if group == 0 || c_in != cg * group || m_out % group != 0 || [kh, kw] != geometry.kernel {
            bail!("{FUSED_OP}: weights {wshape:?} do not fit {c_in} input channels in {group} groups");
        }
        let cgp = QConv::padded_channels(kernel, &geometry, cg);
        let k = kh * kw * cgp;
        let kp = k.div_ceil(K_STEP) * K_STEP;
        let mg = m_out / group;
        let mgp = mg.div_ceil(4) * 4;
        let signed = kernel.signed_input();
        let mut w_rows = vec![0i8; group * mgp * kp];
        let mut bias_f = vec![0i32; group * mgp + CH_SLACK];
        let mut mult = vec![0f32; group * mgp + CH_SLACK];
        for g in 0..group {
            for j in 0..mg {
                let m = g * mg + j;
                let row = &mut w_rows[(g * mgp + j) * kp..][..kp];
                let mut sum = 0i32;
                for c in 0..cg {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let v = w[((m * cg + c) * kh + ky) * kw + kx];
                            row[(ky * kw + kx) * cgp + c] = v;
                            sum += v as i32;
                        }
                    }
                }
                let b = bias.map(|b| b[m]).unwrap_or(0);
                // acc_true = Σ w·(x − zx) + b; the kernel sums w·x (unsigned) or w·(x − 128).
                bias_f[g * mgp + j] = if signed {
                    b + (128 - zx as i32) * sum
                } else {
                    b - zx as i32 * sum
                };
                let s = if sw.len() == 1 { sw[0] } else { sw[m] };
                mult[g * mgp + j] = (sx as f64 * s as f64 / sy as f64) as f32;
            }
        }
        let w_packed = match kernel {
            // [g][m/4][k/4][4 m][4 k]: one SDOT register of 4 channels × 4 k at a time
            Kernel::ArmDot => pack_m4(&w_rows, group, mgp, kp, 4),
            // [g][m/4][k/16][4 m][16 k]: the NEON tile's two loads of 4 channels × 16 k
            Kernel::ArmV7Neon => pack_m4(&w_rows, group, mgp, kp, 16),
            Kernel::X86Vnni => {
                // [g][m/16][k/4][16 m][4 k], channels past mgp zero
                let nv = mgp.div_ceil(ZMM_CH);
                let mut p = vec![0i8; group * nv * ZMM_CH * kp];
                for g in 0..group {
                    for j in 0..mgp {
                        for k in 0..kp {
                            let at = ((g * nv + j / ZMM_CH) * (kp / 4) + k / 4) * ZMM_CH * 4 + (j % ZMM_CH) * 4 + k % 4;
                            p[at] = w_rows[(g * mgp + j) * kp + k];
                        }
                    }
                }
                p
            }
            _ => Vec::new(),
        };
        let (plane_mv, w_plane) = QConv::plane_weights(kernel, &geometry, cg, mg, w);
        let (arm_mv, plane_pairs, w_taps) = QConv::arm_plane_weights(kernel, &geometry, cg, mg, w);
        let plane_mv = plane_mv.max(arm_mv);
        Ok(QConv {
            geometry,
            c_in,
            m_out,
            kp,
            cgp,
            mgp,
            kernel,
            w_rows,
            w_packed,
            bias: bias_f,
            mult,
            zy,
            pad_byte: if signed { zx ^ 0x80 } else { zx },
            input_hwc: false,
            output_hwc: false,
            plane_mv,
            w_plane,
            plane_pairs,
            w_taps,
        })
    }

    /// Whether this convolution runs on the plane kernel: set up for it, built for the
    /// architecture of its kernel, and reading and writing channel planes (not chained
    /// channels-last).
    fn runs_on_planes(&self) -> bool {
        let here = match self.kernel {
            Kernel::X86Vnni | Kernel::X86AvxVnni | Kernel::X86Avx2 => cfg!(target_arch = "x86_64"),
            Kernel::ArmDot | Kernel::ArmSmlal => cfg!(target_arch = "aarch64"),
            _ => false,
        };
        here && self.plane_mv > 0 && !self.input_hwc && !self.output_hwc
    }

    /// Input channels per group as the direct path reads them ([`QConv::cgp`]). On the aarch64
    /// kernels, one group of more than one channel but not a multiple of [`K_STEP`] is padded to
    /// the next multiple when that adds at most a third (12 → 16, 24 → 32), at stride 1: the
    /// tiles then read each tap's channels from the padded input in place, and the im2col rows,
    /// which cost more than the third more multiply-adds (neu_segment's 12- and 24-channel
    /// layers), go. At stride 2 a quarter of the rows remain, and there the multiply-adds cost
    /// more (neu_classify's 24-channel layer: 5.39 → 5.62 M instructions on the Cortex-A76).
    /// Elsewhere `cg`.
    fn padded_channels(kernel: Kernel, geometry: &Geometry, cg: usize) -> usize {
        let cgp = cg.next_multiple_of(K_STEP);
        let arm = matches!(kernel, Kernel::ArmDot | Kernel::ArmSmlal);
        if arm && geometry.group == 1 && geometry.strides == [1, 1] && cg > 1 && 3 * cgp <= 4 * cg {
            cgp
        } else {
            cg
        }
    }

    /// A convolution the aarch64 plane kernel runs ([`kernels::arm::plane_tile`]): on the
    /// aarch64 kernels, at stride 1 without dilation, a kernel wider than one tap, and few output
    /// channels per group (at most 4, or 8 in two passes of 4 from at most [`PLANE_MAX_CG`] input
    /// channels): neu_segment's full-resolution convolutions (15 → 1 and 6 → 6, 3×3 over
    /// 200×200) and the anomaly model's filter banks. There a tile of 4 or 8 channels is mostly
    /// padding and the im2col rows outweigh the multiply-adds; the plane kernel reads the padded
    /// input planes in place, once a pass (two passes for the 6 → 6 one still cost less than its
    /// im2col: the whole model 65.2 → 58.4 M instructions per inference on the Cortex-A76).
    fn arm_plane_fits(kernel: Kernel, geometry: &Geometry, cg: usize, mg: usize) -> bool {
        matches!(kernel, Kernel::ArmDot | Kernel::ArmSmlal)
            && geometry.strides == [1, 1]
            && geometry.dilations == [1, 1]
            && geometry.kernel[0] * geometry.kernel[1] > 1
            && (mg <= 4 || (cg <= PLANE_MAX_CG && mg <= 2 * 4))
    }

    /// The aarch64 plane kernel's channels per pass, whether it may add taps in pairs, and its
    /// weights (the layout of [`QConv::w_taps`]); `(0, false, [])` for a convolution it does not
    /// run ([`QConv::arm_plane_fits`]).
    fn arm_plane_weights(
        kernel: Kernel,
        geometry: &Geometry,
        cg: usize,
        mg: usize,
        w: &[i8],
    ) -> (usize, bool, Vec<i8>) {
        if !QConv::arm_plane_fits(kernel, geometry, cg, mg) {
            return (0, false, Vec::new());
        }
        let mv = match mg {
            1 => 1,
            2 => 2,
            _ => 4,
        };
        let passes = mg.div_ceil(mv);
        let [kh, kw] = geometry.kernel;
        let taps = cg * kh * kw;
        let tp = taps.next_multiple_of(2);
        let mut out = vec![0i8; geometry.group * passes * tp * mv];
        for g in 0..geometry.group {
            for pass in 0..passes {
                for t in 0..taps {
                    for j in 0..mv.min(mg - pass * mv) {
                        let m = g * mg + pass * mv + j;
                        // weights are [m][c][ky][kx]; tap t is (c, ky, kx) in that order
                        out[((g * passes + pass) * tp + t) * mv + j] = w[m * taps + t];
                    }
                }
            }
        }
        let pairs = out
            .chunks_exact(2 * mv)
            .all(|pair| (0..mv).all(|j| !(pair[j] == i8::MIN && pair[mv + j] == i8::MIN)));
        (mv, pairs, out)
    }

    /// The plane kernel's tile width and weights for a convolution [`QConv::plane_fits`] takes
    /// (the anomaly model's filter banks: 17×17 taps 1 → 7, 21×21 taps depthwise over 7;
    /// neu_segment's full-resolution convolutions, 15 → 1 and 6 → 6 over 3×3), on the x86
    /// kernels; `(0, [])` for any other. There the channels are too few to fill a register and
    /// the taps too many for im2col: the plane kernel puts 16 output pixels in a register
    /// instead (8 on 256 bits; see [`QConv::run_plane`] and [`QConv::run_plane_ymm`]). A word
    /// holds 4 weights as bytes, or on AVX2 2 as 16-bit lanes ([`QConv::plane_step`]): of 4
    /// taps of the one input channel, or of one tap of 4 input channels ([`QConv::plane_layout`]).
    fn plane_weights(kernel: Kernel, geometry: &Geometry, cg: usize, mg: usize, w: &[i8]) -> (usize, Vec<i32>) {
        let x86 = matches!(kernel, Kernel::X86Vnni | Kernel::X86AvxVnni | Kernel::X86Avx2);
        if !x86 || !QConv::plane_fits(kernel, geometry, cg, mg) {
            return (0, Vec::new());
        }
        let mv = match mg {
            1 => 1,
            2 => 2,
            3 | 4 => 4,
            _ => 8,
        };
        // passes of `mv` channels over the same windows (one but on 256 bits past 8 channels)
        let chunks = mg.div_ceil(mv);
        let [kh, kw] = geometry.kernel;
        let step = Self::plane_step(kernel);
        let (planes, kq, _) = Self::plane_layout(kernel, kw, cg);
        let mut words = vec![0i32; geometry.group * chunks * planes * kh * kq * mv];
        // per group and pass: plane of words, kernel row, word, then the pass's channels
        let rows = (0..geometry.group * chunks).flat_map(|gc| (0..planes * kh).map(move |r| (gc, r / kh, r % kh)));
        for (gc, b, ky) in rows {
            let (g, c) = (gc / chunks, gc % chunks);
            for q in 0..kq {
                for j in 0..mv.min(mg - c * mv) {
                    let m = g * mg + c * mv + j;
                    // the word's i-th weight: tap step·q + i of the one channel, or tap q of
                    // channel step·b + i
                    let weight = |i: usize| {
                        let (ci, kx) = if cg == 1 { (0, step * q + i) } else { (step * b + i, q) };
                        if ci < cg && kx < kw {
                            w[((m * cg + ci) * kh + ky) * kw + kx]
                        } else {
                            0
                        }
                    };
                    let word = if step == 4 {
                        i32::from_le_bytes([weight(0) as u8, weight(1) as u8, weight(2) as u8, weight(3) as u8])
                    } else {
                        // two 16-bit lanes, the first weight low
                        (weight(0) as i16 as u16 as u32 | (weight(1) as i16 as u16 as u32) << 16) as i32
                    };
                    words[(((gc * planes + b) * kh + ky) * kq + q) * mv + j] = word;
                }
            }
        }
        (mv, words)
    }

    /// A convolution the plane kernel can run, at stride 1 without dilation: one input channel
    /// per group and at most `PLANE_MAX_CH` output channels per group (`PLANE_MAX_CH_YMM` on
    /// 256 bits), or up to [`PLANE_MAX_CG`] input channels per group, at most `PLANE_MAX_CH`
    /// output channels per group and a kernel wider than one tap (up to [`PLANE_MAX_CG_FEW`]
    /// input channels for at most [`PLANE_FEW_CH`] output channels).
    fn plane_fits(kernel: Kernel, geometry: &Geometry, cg: usize, mg: usize) -> bool {
        let max = if kernel == Kernel::X86Vnni {
            PLANE_MAX_CH
        } else {
            PLANE_MAX_CH_YMM
        };
        let taps = geometry.kernel[0] * geometry.kernel[1];
        let several = cg <= PLANE_MAX_CG && mg <= PLANE_MAX_CH || cg <= PLANE_MAX_CG_FEW && mg <= PLANE_FEW_CH;
        let planes = cg == 1 && mg <= max || several && taps > 1;
        planes && geometry.strides == [1, 1] && geometry.dilations == [1, 1]
    }

    /// How the plane kernel's words are laid out for `cg` input channels per group and kernel
    /// rows of `kw` taps: `(planes, kq, tstep)`, the planes of words, the words a kernel row
    /// takes and how many pixels apart its consecutive words are read. One input channel: one
    /// plane of windows, each word [`QConv::plane_step`] consecutive taps (pixels) of the row,
    /// so a row takes `kw / step` words `step` pixels apart. Several: one plane per `step`
    /// channels, each word those channels at one pixel, so a row takes `kw` words 1 pixel
    /// apart (a quarter of the windows' bytes per channel, and no pixel copied four times).
    fn plane_layout(kernel: Kernel, kw: usize, cg: usize) -> (usize, usize, usize) {
        let step = Self::plane_step(kernel);
        if cg == 1 {
            (1, kw.div_ceil(step), step)
        } else {
            (cg.div_ceil(step), kw, 1)
        }
    }

    /// Weights per word of the plane kernel: 4 bytes for `vpdpbusd`, 2 lanes of 16 bits
    /// for AVX2's `vpmaddwd`.
    fn plane_step(kernel: Kernel) -> usize {
        if kernel == Kernel::X86Avx2 {
            2
        } else {
            4
        }
    }

    /// The kernel this CPU runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    fn cg(&self) -> usize {
        self.c_in / self.geometry.group
    }

    fn run(&self, scratch: &mut Scratch, x: &[u8], n: usize, h: usize, w: usize, y: &mut [u8]) -> TractResult<()> {
        let g = &self.geometry;
        let [oh, ow] = g.output_hw(h, w)?;
        let (cg, group, mg) = (self.cg(), g.group, self.m_out / g.group);
        let pixels = oh * ow;
        let signed = self.kernel.signed_input();
        scratch.cols.resize(P_BLOCK * self.kp + RUN_SLACK, 0);
        for b in 0..n {
            for gi in 0..group {
                #[cfg(target_arch = "x86_64")]
                if self.runs_on_planes() {
                    let xg = &x[(b * self.c_in + gi * cg) * h * w..][..cg * h * w];
                    let yb = &mut y[b * self.m_out * pixels..][..self.m_out * pixels];
                    let io = (xg, [h, w], [oh, ow], gi, mg);
                    // SAFETY: the plane kernel is set up only for the x86 kernels, each chosen
                    // (or tested) only where the CPU has its instructions, X86Avx2 only for
                    // weights within its range (`with_kernel`).
                    unsafe {
                        match (self.kernel, self.plane_mv) {
                            (Kernel::X86Vnni, 1) => self.run_plane::<1, 8>(scratch, io, yb),
                            (Kernel::X86Vnni, 2) => self.run_plane::<2, 8>(scratch, io, yb),
                            (Kernel::X86Vnni, 4) => self.run_plane::<4, 6>(scratch, io, yb),
                            (Kernel::X86Vnni, _) => self.run_plane::<8, 3>(scratch, io, yb),
                            (Kernel::X86AvxVnni, 1) => self.run_plane_ymm::<1, 8, true>(scratch, io, yb),
                            (Kernel::X86AvxVnni, 2) => self.run_plane_ymm::<2, 4, true>(scratch, io, yb),
                            (Kernel::X86AvxVnni, 4) => self.run_plane_ymm::<4, 2, true>(scratch, io, yb),
                            (Kernel::X86AvxVnni, _) => self.run_plane_ymm::<8, 1, true>(scratch, io, yb),
                            (_, 1) => self.run_plane_ymm::<1, 8, false>(scratch, io, yb),
                            (_, 2) => self.run_plane_ymm::<2, 4, false>(scratch, io, yb),
                            (_, 4) => self.run_plane_ymm::<4, 2, false>(scratch, io, yb),
                            (_, _) => self.run_plane_ymm::<8, 1, false>(scratch, io, yb),
                        }
                    }
                    continue;
                }
                #[cfg(target_arch = "aarch64")]
                if self.runs_on_planes() {
                    let xg = &x[(b * self.c_in + gi * cg) * h * w..][..cg * h * w];
                    let yb = &mut y[b * self.m_out * pixels..][..self.m_out * pixels];
                    let io = (xg, [h, w], [oh, ow], gi, mg);
                    // SAFETY: `plane_pairs` is set only where no channel weighs both taps of a
                    // pair −128 (`arm_plane_weights`); NEON is part of aarch64.
                    unsafe {
                        match (self.plane_mv, self.plane_pairs) {
                            (1, true) => self.run_plane_arm::<1, true>(scratch, io, yb),
                            (2, true) => self.run_plane_arm::<2, true>(scratch, io, yb),
                            (_, true) => self.run_plane_arm::<4, true>(scratch, io, yb),
                            (1, false) => self.run_plane_arm::<1, false>(scratch, io, yb),
                            (2, false) => self.run_plane_arm::<2, false>(scratch, io, yb),
                            (_, false) => self.run_plane_arm::<4, false>(scratch, io, yb),
                        }
                    }
                    continue;
                }
                if group == 1 && (self.cgp.is_multiple_of(K_STEP) || (self.kernel == Kernel::X86Vnni && cg % 4 == 0)) {
                    // Direct: the kernels read each tap's channels in place from the padded
                    // channels-last input (no im2col), K = taps × `cgp` channels already a
                    // multiple of K_STEP (the x86 broadcast kernel steps 4 bytes at a time: a
                    // multiple of 4 will do). The input goes into the padded map in one pass:
                    // from the channel planes (transposed, in the kernel's domain) or from a
                    // chained convolution's channels-last hand-off, which is read as it is when
                    // nothing is padded.
                    let [pt, pl, pb, pr] = g.pads;
                    let (hp, wp) = (h + pt + pb, w + pl + pr);
                    let cgp = self.cgp;
                    let base: &[u8] = if self.input_hwc && g.pads == [0; 4] && cgp == cg {
                        &x[b * h * w * cg..][..h * w * cg]
                    } else {
                        if scratch.padded.len() != hp * wp * cgp {
                            // The border keeps the pad byte; only the inside is written per run.
                            scratch.padded.clear();
                            scratch.padded.resize(hp * wp * cgp, self.pad_byte);
                        }
                        let inside = &mut scratch.padded[(pt * wp + pl) * cgp..];
                        if self.input_hwc {
                            let xb = &x[b * h * w * cg..][..h * w * cg];
                            pixels_into_padded(inside, xb, cg, cgp, [h, w], wp);
                        } else {
                            let xg = &x[(b * self.c_in + gi * cg) * h * w..][..cg * h * w];
                            let flip = if signed { 0x80 } else { 0 };
                            planes_into_padded(inside, xg, cg, cgp, [h, w], wp, flip);
                        }
                        &scratch.padded
                    };
                    let yb = &mut y[b * self.m_out * pixels..][..self.m_out * pixels];
                    self.run_direct(&mut scratch.taps, base, wp, [oh, ow], mg, yb);
                    continue;
                }
                // The group's input, channels last, in the kernel's domain: as it arrives from a
                // chained convolution (one group), or transposed here; RUN_SLACK bytes past the
                // end let `copy_run` move short runs 16 bytes at a time.
                let hwc: &[u8] = if self.input_hwc {
                    &x[b * h * w * cg..][..h * w * cg]
                } else {
                    scratch.hwc.resize(h * w * cg + RUN_SLACK, 0);
                    let xg = &x[(b * self.c_in + gi * cg) * h * w..][..cg * h * w];
                    to_channels_last(&mut scratch.hwc, xg, cg, h * w, signed);
                    &scratch.hwc
                };
                let mut p0 = 0;
                while p0 < pixels {
                    let np = P_BLOCK.min(pixels - p0);
                    self.im2col(&mut scratch.cols, hwc, p0, np, [h, w], ow);
                    for pi in np..np.div_ceil(P_TILE) * P_TILE {
                        scratch.cols[pi * self.kp..][..self.kp].fill(0);
                    }
                    let yb = &mut y[b * self.m_out * pixels..][..self.m_out * pixels];
                    self.block(gi, Source::Cols(&scratch.cols), np, p0, pixels, mg, yb);
                    p0 += np;
                }
            }
        }
        Ok(())
    }

    /// The direct path of one group: the tiles read each tap's [`QConv::cgp`] channels in place
    /// from `base`, the channels-last input inside its padding (`wp` pixels a row), K = taps ×
    /// `cgp` a multiple of [`K_STEP`]; `taps` is the scratch for the taps' offsets.
    fn run_direct(
        &self,
        taps: &mut Vec<usize>,
        base: &[u8],
        wp: usize,
        [oh, ow]: [usize; 2],
        mg: usize,
        yb: &mut [u8],
    ) {
        let g = &self.geometry;
        let [kh, kw] = g.kernel;
        let cg = self.cgp;
        taps.clear();
        for ky in 0..kh {
            for kx in 0..kw {
                taps.push((ky * g.dilations[0] * wp + kx * g.dilations[1]) * cg);
            }
        }
        let src = Source::Direct { base, taps, wp, cg, ow };
        let pixels = oh * ow;
        let mut p0 = 0;
        while p0 < pixels {
            let np = P_BLOCK.min(pixels - p0);
            self.block(0, src, np, p0, pixels, mg, yb);
            p0 += np;
        }
    }

    /// im2col: one row of `kp` bytes per output pixel of the block (`np` pixels from `p0`), in
    /// (ky, kx, c) order, read from the channels-last input `hwc` of `h`·`w` pixels.
    #[inline(never)]
    fn im2col(&self, cols: &mut [u8], hwc: &[u8], p0: usize, np: usize, [h, w]: [usize; 2], ow: usize) {
        let g = &self.geometry;
        let cg = self.cg();
        let [kh, kw] = g.kernel;
        for pi in 0..np {
            let p = p0 + pi;
            let (oy, ox) = (p / ow, p % ow);
            let row0 = pi * self.kp;
            for ky in 0..kh {
                let iy = (oy * g.strides[0] + ky * g.dilations[0]) as isize - g.pads[0] as isize;
                if g.dilations[1] == 1 {
                    // The taps of one kernel row are kw·cg contiguous bytes.
                    let at = row0 + ky * kw * cg;
                    if iy < 0 || iy >= h as isize {
                        fill_run(cols, at, kw * cg, self.pad_byte);
                        continue;
                    }
                    let ix0 = (ox * g.strides[1]) as isize - g.pads[1] as isize;
                    let lo = (-ix0).clamp(0, kw as isize) as usize;
                    let hi = (w as isize - ix0).clamp(lo as isize, kw as isize) as usize;
                    // In increasing order: each move may write past its run.
                    fill_run(cols, at, lo * cg, self.pad_byte);
                    if hi > lo {
                        let from = (iy as usize * w + (ix0 + lo as isize) as usize) * cg;
                        copy_run(cols, at + lo * cg, hwc, from, (hi - lo) * cg);
                    }
                    fill_run(cols, at + hi * cg, (kw - hi) * cg, self.pad_byte);
                    continue;
                }
                for kx in 0..kw {
                    let ix = (ox * g.strides[1] + kx * g.dilations[1]) as isize - g.pads[1] as isize;
                    let at = row0 + (ky * kw + kx) * cg;
                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                        fill_run(cols, at, cg, self.pad_byte);
                    } else {
                        let from = (iy as usize * w + ix as usize) * cg;
                        copy_run(cols, at, hwc, from, cg);
                    }
                }
            }
            fill_run(cols, row0 + kh * kw * cg, self.kp - kh * kw * cg, 0);
        }
    }

    /// The tiles of one im2col block: `np` pixels starting at pixel `p0` of the output plane,
    /// requantised into `yb` (one image's output: channel-major planes, or channels-last when
    /// [`QConv::output_hwc`]).
    #[allow(clippy::too_many_arguments)]
    fn block(&self, gi: usize, src: Source<'_>, np: usize, p0: usize, pixels: usize, mg: usize, yb: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.kernel == Kernel::X86Vnni {
            // Up to 4 registers of 16 channels at a time, as many pixels as the 32 registers
            // hold accumulators for (24 or 16).
            let nv = self.mgp.div_ceil(ZMM_CH);
            let mut v0 = 0;
            while v0 < nv {
                let mv = (nv - v0).min(4);
                // SAFETY: X86Vnni is chosen (or tested) only where the CPU has AVX-512 VNNI.
                unsafe {
                    match mv {
                        1 => self.chunk_bcast::<1, 16>(gi, v0, src, np, p0, pixels, mg, yb),
                        2 => self.chunk_bcast::<2, 12>(gi, v0, src, np, p0, pixels, mg, yb),
                        3 => self.chunk_bcast::<3, 8>(gi, v0, src, np, p0, pixels, mg, yb),
                        _ => self.chunk_bcast::<4, 6>(gi, v0, src, np, p0, pixels, mg, yb),
                    }
                }
                v0 += mv;
            }
            return;
        }
        let kp = self.kp;
        let mut acc = [[0i32; M_TILE]; P_TILE];
        // Channels-last output is written in the consumers' domain (they share this kernel).
        let flip = if self.output_hwc && self.kernel.signed_input() {
            0x80
        } else {
            0
        };
        let offsets = self.direct_offsets(src, p0, np);
        for mt in 0..self.mgp.div_ceil(M_TILE) {
            let mrow = gi * self.mgp + mt * M_TILE;
            let rows = M_TILE.min(self.mgp - mt * M_TILE);
            let valid = M_TILE.min(mg - mt * M_TILE);
            let bias: &[i32; M_TILE] = self.bias[mrow..mrow + M_TILE].try_into().expect("padded bias");
            let mult: &[f32; M_TILE] = self.mult[mrow..mrow + M_TILE].try_into().expect("padded mult");
            for pt in 0..np.div_ceil(P_TILE) {
                let b = match src {
                    Source::Cols(cols) => {
                        let tile = &cols[pt * P_TILE * kp..][..P_TILE * kp];
                        Rows {
                            ptr: core::array::from_fn(|p| tile[p * kp..].as_ptr()),
                            segs: &[0],
                            seg_len: kp,
                        }
                    }
                    Source::Direct { base, taps, cg, .. } => Rows {
                        // pixels past the block's end read its last one (discarded)
                        ptr: tile_pointers(base, &offsets, pt * P_TILE, np),
                        segs: taps,
                        seg_len: cg,
                    },
                };
                match self.kernel {
                    #[cfg(target_arch = "x86_64")]
                    Kernel::X86Vnni => unsafe {
                        kernels::x86::tile_vnni(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                    },
                    #[cfg(target_arch = "x86_64")]
                    Kernel::X86AvxVnni => unsafe {
                        kernels::x86::tile_avx_vnni(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                    },
                    // SAFETY: X86Avx2 is chosen (or tested) only where the CPU has AVX2, and kept
                    // only for weights within ±64 (`with_kernel`).
                    #[cfg(target_arch = "x86_64")]
                    Kernel::X86Avx2 => unsafe {
                        kernels::x86::tile_avx2(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                    },
                    #[cfg(target_arch = "aarch64")]
                    Kernel::ArmDot => unsafe {
                        kernels::arm::tile_sdot(&self.w_packed[mrow * kp..][..rows * kp], b, kp, rows / 4, &mut acc)
                    },
                    #[cfg(target_arch = "aarch64")]
                    Kernel::ArmSmlal => unsafe {
                        kernels::arm::tile_smlal(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                    },
                    #[cfg(target_arch = "arm")]
                    Kernel::ArmV7Neon => unsafe {
                        kernels::armv7::tile_vmlal(&self.w_packed[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                    },
                    _ => unsafe {
                        if self.kernel.signed_input() {
                            tile_portable::<i8>(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                        } else {
                            tile_portable::<u8>(&self.w_rows[mrow * kp..][..rows * kp], b, kp, rows, &mut acc)
                        }
                    },
                }
                let first = pt * P_TILE;
                let count = P_TILE.min(np - first);
                let c0 = gi * mg + mt * M_TILE;
                #[cfg(target_arch = "aarch64")]
                if count == P_TILE {
                    self.store_tile_arm(yb, &acc, (bias, mult, flip), valid, c0, p0 + first, pixels);
                    continue;
                }
                for (pi, a) in acc.iter().enumerate().take(count) {
                    #[cfg(target_arch = "arm")]
                    let q = if self.kernel == Kernel::ArmV7Neon {
                        // SAFETY: ArmV7Neon is chosen (or tested) only where the CPU has NEON.
                        unsafe { kernels::armv7::requantise8(a, bias, mult, self.zy, flip) }
                    } else {
                        requantise(a, bias, mult, self.zy, flip)
                    };
                    #[cfg(not(target_arch = "arm"))]
                    let q = requantise(a, bias, mult, self.zy, flip);
                    self.store(yb, &q, valid, c0, p0 + first + pi, pixels);
                }
            }
        }
    }
}

impl QConv {
    /// Where each of a block's `np` pixels (from output pixel `p0`) starts in the direct path's
    /// padded input: pixel `(oy, ox)` at `(oy·sy·wp + ox·sx)·cg`, stepped along the output row
    /// (no division per pixel), and checked once against the input's length (the offsets only
    /// grow). All zero for an im2col block.
    #[inline(always)]
    fn direct_offsets(&self, src: Source<'_>, p0: usize, np: usize) -> [usize; P_BLOCK] {
        let mut offsets = [0usize; P_BLOCK];
        if let Source::Direct { base, wp, cg, ow, .. } = src {
            let [sy, sx] = self.geometry.strides;
            let (mut oy, mut ox) = (p0 / ow, p0 % ow);
            for o in offsets.iter_mut().take(np) {
                *o = (oy * sy * wp + ox * sx) * cg;
                ox += 1;
                if ox == ow {
                    (oy, ox) = (oy + 1, 0);
                }
            }
            assert!(
                np <= P_BLOCK && (np == 0 || offsets[np - 1] <= base.len()),
                "a block of {np} pixels from {p0} past the padded input"
            );
        }
        offsets
    }

    /// Store the first `valid` of one pixel's requantised channels `q` (output channels `c0..`
    /// of pixel `p`) into the image's output `yb`: channels-last when [`QConv::output_hwc`],
    /// else one byte per channel plane of `pixels`.
    #[inline(always)]
    fn store<const N: usize>(&self, yb: &mut [u8], q: &[u8; N], valid: usize, c0: usize, p: usize, pixels: usize) {
        if self.output_hwc {
            let at = p * self.m_out + c0;
            if valid == N {
                *as_array_mut::<N>(yb, at) = *q;
            } else {
                for (d, &v) in yb[at..at + valid].iter_mut().zip(q) {
                    *d = v;
                }
            }
        } else if valid > 0 {
            // one bounds check for the pixel's last channel, the rest below it
            assert!((c0 + valid - 1) * pixels + p < yb.len(), "pixel {p} past the output");
            let dst = yb.as_mut_ptr();
            for (c, &v) in q.iter().enumerate().take(valid) {
                // SAFETY: c < valid, so (c0 + c)·pixels + p ≤ the index asserted above
                unsafe { *dst.add((c0 + c) * pixels + p) = v };
            }
        }
    }

    /// A whole tile's [`P_TILE`] pixels × [`M_TILE`] channels requantised in NEON registers
    /// ([`requantise`]'s arithmetic, the bias and factors loaded once) and stored with one
    /// bounds check: channels-last, one 8-byte store a pixel; into channel planes, transposed in
    /// registers so that each channel's 4 pixels (adjacent in its plane) are one 4-byte store.
    /// `(bias, mult, flip)` as for [`requantise`]; `p` the tile's first pixel.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn store_tile_arm(
        &self,
        yb: &mut [u8],
        acc: &[[i32; M_TILE]; P_TILE],
        (bias, mult, flip): (&[i32; M_TILE], &[f32; M_TILE], u8),
        valid: usize,
        c0: usize,
        p: usize,
        pixels: usize,
    ) {
        use std::arch::aarch64::*;
        const { assert!(M_TILE == 8 && P_TILE == 4, "the transposition below is 4 × 8 bytes") };
        // SAFETY: NEON is part of aarch64; the loads read 4 lanes of arrays of M_TILE = 8 from
        // 0 and 4; the stores are inside `yb` by the assertions before them.
        unsafe {
            let z = vdupq_n_s32(self.zy as i32);
            let (b0, b1) = (vld1q_s32(bias.as_ptr()), vld1q_s32(bias.as_ptr().add(4)));
            let (m0, m1) = (vld1q_f32(mult.as_ptr()), vld1q_f32(mult.as_ptr().add(4)));
            let f = vdup_n_u8(flip);
            let half = |a: *const i32, b: int32x4_t, m: float32x4_t| {
                let v = vmulq_f32(vcvtq_f32_s32(vaddq_s32(vld1q_s32(a), b)), m);
                vqmovn_s32(vqaddq_s32(vcvtnq_s32_f32(v), z))
            };
            let q = |a: &[i32; M_TILE]| {
                let lo = half(a.as_ptr(), b0, m0);
                let hi = half(a.as_ptr().add(4), b1, m1);
                veor_u8(vqmovun_s16(vcombine_s16(lo, hi)), f)
            };
            let (q0, q1, q2, q3) = (q(&acc[0]), q(&acc[1]), q(&acc[2]), q(&acc[3]));
            if self.output_hwc {
                let at = p * self.m_out + c0;
                if valid == M_TILE {
                    assert!(at + 3 * self.m_out + M_TILE <= yb.len(), "pixel {p} past the output");
                    let d = yb.as_mut_ptr().add(at);
                    vst1_u8(d, q0);
                    vst1_u8(d.add(self.m_out), q1);
                    vst1_u8(d.add(2 * self.m_out), q2);
                    vst1_u8(d.add(3 * self.m_out), q3);
                } else {
                    for (i, v) in [q0, q1, q2, q3].into_iter().enumerate() {
                        let mut b = [0u8; M_TILE];
                        vst1_u8(b.as_mut_ptr(), v);
                        self.store(yb, &b, valid, c0, p + i, pixels);
                    }
                }
                return;
            }
            if valid == 0 {
                return;
            }
            // bytes (pixel, channel) → 16-bit (pixels 0-1 | 2-3, channel) → 32-bit (channel)
            let (lo01, hi01) = (
                vreinterpret_u16_u8(vzip1_u8(q0, q1)),
                vreinterpret_u16_u8(vzip2_u8(q0, q1)),
            );
            let (lo23, hi23) = (
                vreinterpret_u16_u8(vzip1_u8(q2, q3)),
                vreinterpret_u16_u8(vzip2_u8(q2, q3)),
            );
            let c03 = vcombine_u16(vzip1_u16(lo01, lo23), vzip2_u16(lo01, lo23));
            let c47 = vcombine_u16(vzip1_u16(hi01, hi23), vzip2_u16(hi01, hi23));
            let mut by_channel = [0u32; M_TILE];
            vst1q_u32(by_channel.as_mut_ptr(), vreinterpretq_u32_u16(c03));
            vst1q_u32(by_channel.as_mut_ptr().add(4), vreinterpretq_u32_u16(c47));
            assert!(
                (c0 + valid - 1) * pixels + p + P_TILE <= yb.len(),
                "pixel {p} past the output"
            );
            let d = yb.as_mut_ptr().add(c0 * pixels + p);
            for (c, &v) in by_channel.iter().enumerate().take(valid) {
                // little-endian: the tile's first pixel at the lowest address
                (d.add(c * pixels) as *mut u32).write_unaligned(v);
            }
        }
    }

    /// One group of a convolution on the aarch64 plane kernel: the group's `cg` input planes
    /// `xg` copied once, sign bit flipped, inside their padding (rows of the output width
    /// rounded up to [`kernels::arm::PLANE_PIXELS`] plus the kernel's width, so every step reads
    /// whole registers; the border keeps the pad byte between runs), then per pass of `MV`
    /// channels, output row and 16 pixels one [`kernels::arm::plane_tile`], requantised into the
    /// group's output planes in `yb`.
    ///
    /// # Safety
    /// With `PAIRS`, [`QConv::plane_pairs`] holds.
    #[cfg(target_arch = "aarch64")]
    unsafe fn run_plane_arm<const MV: usize, const PAIRS: bool>(
        &self,
        scratch: &mut Scratch,
        (xg, [h, w], [oh, ow], gi, mg): PlaneIo<'_>,
        yb: &mut [u8],
    ) {
        use kernels::arm::{plane_tile, requantise16, PLANE_PIXELS};
        let g = &self.geometry;
        let cg = self.cg();
        let [kh, kw] = g.kernel;
        let [pt, pl, _, _] = g.pads;
        let wpp = ow.next_multiple_of(PLANE_PIXELS) + kw - 1;
        let hp = oh + kh - 1;
        let plane = hp * wpp;
        if scratch.padded.len() != cg * plane {
            scratch.padded.clear();
            scratch.padded.resize(cg * plane, self.pad_byte);
        }
        for c in 0..cg {
            for yy in 0..h {
                let dst = &mut scratch.padded[c * plane + (yy + pt) * wpp + pl..][..w];
                for (d, s) in dst.iter_mut().zip(&xg[(c * h + yy) * w..][..w]) {
                    *d = s ^ 0x80;
                }
            }
        }
        let taps = cg * kh * kw;
        let tp = taps.next_multiple_of(2);
        scratch.taps.clear();
        for c in 0..cg {
            for ky in 0..kh {
                for kx in 0..kw {
                    scratch.taps.push(c * plane + ky * wpp + kx);
                }
            }
        }
        // the odd tap's partner: weight 0 at any readable place
        scratch.taps.resize(tp, 0);
        let pixels = oh * ow;
        let passes = mg.div_ceil(MV);
        let mut sums = [[0i32; PLANE_PIXELS]; 4];
        for pass in 0..passes {
            let wts = &self.w_taps[(gi * passes + pass) * tp * MV..][..tp * MV];
            let valid = MV.min(mg - pass * MV);
            for oy in 0..oh {
                for x0 in (0..ow).step_by(PLANE_PIXELS) {
                    let at = oy * wpp + x0;
                    debug_assert!(at + scratch.taps[..taps].iter().max().unwrap_or(&0) + PLANE_PIXELS <= cg * plane);
                    // SAFETY: the last tap of the last step reads up to row oh − 1 + kh − 1 =
                    // hp − 1 of the last plane, columns below x0 + 16 + kw − 1 ≤ wpp; `wts`
                    // holds tp·MV weights; PAIRS as the caller promises.
                    unsafe {
                        plane_tile::<MV, PAIRS>(
                            scratch.padded.as_ptr().add(at) as *const i8,
                            &scratch.taps,
                            wts.as_ptr(),
                            &mut sums,
                        )
                    };
                    let n = PLANE_PIXELS.min(ow - x0);
                    for (j, s) in sums.iter().enumerate().take(valid) {
                        let row = gi * self.mgp + pass * MV + j;
                        // SAFETY: NEON is part of aarch64.
                        let q = unsafe { requantise16(s, self.bias[row], self.mult[row], self.zy) };
                        let c = gi * mg + pass * MV + j;
                        yb[c * pixels + oy * ow + x0..][..n].copy_from_slice(&q[..n]);
                    }
                }
            }
        }
    }

    /// The plane kernel's input: group `gi`'s planes `xg` (`cg` planes of `h`×`w` bytes) padded
    /// once into words ([`QConv::plane_layout`]), `row` words per padded row, `rows` = `oh + kh
    /// − 1` rows per plane of words, for output rows of `owp` pixels (a multiple of the tile).
    /// One input channel: `scratch.quads[r·row + x]` = the bytes at `x..x + 4` of padded row
    /// `r` (on AVX2 the two at `x..x + 2` as 16-bit lanes). Several: `scratch.quads[(b·rows +
    /// r)·row + x]` = channels `4b..4b + 4` (on AVX2 `2b..2b + 2`, as 16-bit lanes) at padded
    /// pixel `(r, x)`, channels past the group's holding the pad byte. Returns `row`.
    #[cfg(target_arch = "x86_64")]
    fn plane_windows(&self, scratch: &mut Scratch, xg: &[u8], [h, w]: [usize; 2], oh: usize, owp: usize) -> usize {
        let g = &self.geometry;
        let [kh, kw] = g.kernel;
        let [pt, pl, _, _] = g.pads;
        let step = Self::plane_step(self.kernel);
        let cg = self.cg();
        let (planes, kq, tstep) = Self::plane_layout(self.kernel, kw, cg);
        // words per padded row: every load of a register from x0 + lanes·p + tstep·q stays inside
        let row = owp + tstep * kq;
        let rows = oh + kh - 1;
        // padded input rows a word reads: one (its taps) or `step` (its channels)
        let lanes = if cg == 1 { 1 } else { step };
        let stride = row + 3;
        scratch.quads.resize(planes * rows * row, 0);
        scratch.prow.resize(lanes * stride, 0);
        for (b, r) in (0..planes).flat_map(|b| (0..rows).map(move |r| (b, r))) {
            let iy = r as isize - pt as isize;
            for i in 0..lanes {
                let prow = &mut scratch.prow[i * stride..][..stride];
                prow.fill(self.pad_byte);
                let ci = b * lanes + i;
                if ci < cg && iy >= 0 && (iy as usize) < h {
                    prow[pl..pl + w].copy_from_slice(&xg[(ci * h + iy as usize) * w..][..w]);
                }
            }
            let quads = scratch.quads[(b * rows + r) * row..][..row].iter_mut();
            let p = &scratch.prow;
            match (lanes, step) {
                (1, 4) => {
                    for (q, win) in quads.zip(p.windows(4)) {
                        *q = u32::from_le_bytes([win[0], win[1], win[2], win[3]]);
                    }
                }
                (1, _) => {
                    for (q, win) in quads.zip(p.windows(2)) {
                        *q = win[0] as u32 | (win[1] as u32) << 16;
                    }
                }
                (_, 4) => {
                    let (c0, c1, c2, c3) = (&p[..stride], &p[stride..], &p[2 * stride..], &p[3 * stride..]);
                    for ((((q, &a), &b), &c), &d) in quads.zip(c0).zip(c1).zip(c2).zip(c3) {
                        *q = u32::from_le_bytes([a, b, c, d]);
                    }
                }
                _ => {
                    for ((q, &a), &b) in quads.zip(&p[..stride]).zip(&p[stride..]) {
                        *q = a as u32 | (b as u32) << 16;
                    }
                }
            }
        }
        row
    }

    /// One group of a convolution the plane kernel runs ([`QConv::plane_weights`]): its input
    /// planes `xg` (`cg` × `h`×`w` bytes) are padded once into 4-byte windows
    /// ([`QConv::plane_windows`]), then every output row is computed `MV` channels × `P`
    /// registers of 16 pixels at a time and requantised 16 pixels at a time into the channel
    /// planes of `yb` (one image's output). Lanes past the row's end read the padding and are
    /// discarded.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI; `MV` is [`QConv::plane_mv`]; `[oh, ow]` the output size
    /// of `[h, w]`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn run_plane<const MV: usize, const P: usize>(
        &self,
        scratch: &mut Scratch,
        (xg, [h, w], [oh, ow], gi, mg): PlaneIo<'_>,
        yb: &mut [u8],
    ) {
        use kernels::x86::{plane_tile, requantise16};
        let [kh, kw] = self.geometry.kernel;
        let (planes, kq, tstep) = Self::plane_layout(self.kernel, kw, self.cg());
        let chunk = P * ZMM_CH;
        let row = self.plane_windows(scratch, xg, [h, w], oh, ow.div_ceil(chunk) * chunk);
        let pixels = oh * ow;
        let words = planes * kh * kq * MV;
        let wg = self.w_plane[gi * words..][..words].as_ptr();
        let layout = (planes, (oh + kh - 1) * row, tstep);
        let mut acc = [[[0i32; ZMM_CH]; P]; MV];
        for oy in 0..oh {
            let mut x0 = 0;
            while x0 < ow {
                // SAFETY: rows oy..oy + kh of every plane's `row` words; the loads stay inside
                // (above).
                unsafe {
                    plane_tile::<MV, P>(
                        scratch.quads[oy * row..].as_ptr(),
                        row,
                        layout,
                        x0,
                        kh,
                        kq,
                        wg,
                        &mut acc,
                    )
                };
                for (j, a) in acc.iter().enumerate().take(mg) {
                    let ch = gi * self.mgp + j;
                    let bias = [self.bias[ch]; ZMM_CH];
                    let mult = [self.mult[ch]; ZMM_CH];
                    for (p, ap) in a.iter().enumerate() {
                        let ox = x0 + p * ZMM_CH;
                        if ox >= ow {
                            break;
                        }
                        // SAFETY: AVX-512 F (the caller's contract).
                        let q = unsafe { requantise16(ap, &bias, &mult, self.zy, 0) };
                        let n = ZMM_CH.min(ow - ox);
                        yb[(gi * mg + j) * pixels + oy * ow + ox..][..n].copy_from_slice(&q[..n]);
                    }
                }
                x0 += chunk;
            }
        }
    }

    /// [`QConv::run_plane`] on 256-bit registers (AVX-VNNI's `vpdpbusd` over 4 taps when `VEX`,
    /// else AVX2's `vpmaddwd` over 2): `MV` channels × `P` registers of 8 pixels a tile
    /// ([`kernels::x86::plane_tile_ymm`]), requantised 8 pixels at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 (and AVX-VNNI when `VEX`, the kernel then `X86AvxVnni`, else
    /// `X86Avx2`); `MV` is [`QConv::plane_mv`]; `[oh, ow]` the output size of `[h, w]`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_plane_ymm<const MV: usize, const P: usize, const VEX: bool>(
        &self,
        scratch: &mut Scratch,
        (xg, [h, w], [oh, ow], gi, mg): PlaneIo<'_>,
        yb: &mut [u8],
    ) {
        use kernels::x86::{plane_tile_ymm, YMM_PX};
        let [kh, kw] = self.geometry.kernel;
        let (planes, kq, tstep) = Self::plane_layout(self.kernel, kw, self.cg());
        let chunk = P * YMM_PX;
        let row = self.plane_windows(scratch, xg, [h, w], oh, ow.div_ceil(chunk) * chunk);
        let pixels = oh * ow;
        let chunks = mg.div_ceil(MV);
        let words = planes * kh * kq * MV;
        let layout = (planes, (oh + kh - 1) * row, tstep);
        let mut acc = [[[0i32; YMM_PX]; P]; MV];
        for oy in 0..oh {
            let mut x0 = 0;
            while x0 < ow {
                for c in 0..chunks {
                    let wg = self.w_plane[(gi * chunks + c) * words..][..words].as_ptr();
                    // SAFETY: rows oy..oy + kh of every plane's `row` words; the loads stay
                    // inside (above); the CPU and weights as the caller's contract says.
                    unsafe {
                        plane_tile_ymm::<MV, P, VEX>(
                            scratch.quads[oy * row..].as_ptr(),
                            row,
                            layout,
                            x0,
                            kh,
                            kq,
                            wg,
                            &mut acc,
                        )
                    };
                    self.plane_store(&acc, (gi, mg, c * MV), (oy, ow, x0), pixels, yb);
                }
                x0 += chunk;
            }
        }
    }

    /// Requantise one tile of [`QConv::run_plane_ymm`] (`MV` channels from `j0` of group `gi`,
    /// `P` registers of 8 pixels from `x0` of row `oy`) into the channel planes of `yb`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn plane_store<const MV: usize, const P: usize>(
        &self,
        acc: &[[[i32; M_TILE]; P]; MV],
        (gi, mg, j0): (usize, usize, usize),
        (oy, ow, x0): (usize, usize, usize),
        pixels: usize,
        yb: &mut [u8],
    ) {
        for (jj, a) in acc.iter().enumerate().take(mg - j0) {
            let j = j0 + jj;
            let ch = gi * self.mgp + j;
            let bias = [self.bias[ch]; M_TILE];
            let mult = [self.mult[ch]; M_TILE];
            for (p, ap) in a.iter().enumerate() {
                let ox = x0 + p * M_TILE;
                if ox >= ow {
                    break;
                }
                // SAFETY: the plane kernels on 256 bits run where the CPU has AVX2.
                let q = unsafe { kernels::x86::requantise8_avx2(ap, &bias, &mult, self.zy) };
                let n = M_TILE.min(ow - ox);
                yb[(gi * mg + j) * pixels + oy * ow + ox..][..n].copy_from_slice(&q[..n]);
            }
        }
    }

    /// [`QConv::block`] for the x86 broadcast kernel: output channels `v0 · 16` to
    /// `(v0 + MV) · 16` of group `gi`, `P` pixels a tile. Pixels past the block's end read its
    /// last one and are discarded.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI; the weights are packed for [`Kernel::X86Vnni`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn chunk_bcast<const MV: usize, const P: usize>(
        &self,
        gi: usize,
        v0: usize,
        src: Source<'_>,
        np: usize,
        p0: usize,
        pixels: usize,
        mg: usize,
        yb: &mut [u8],
    ) {
        use kernels::x86::{requantise16, tile_bcast};
        let kp = self.kp;
        let nv = self.mgp.div_ceil(ZMM_CH);
        let wstride = kp * ZMM_CH;
        let w = self.w_packed[(gi * nv + v0) * wstride..][..MV * wstride].as_ptr();
        let mut acc = [[[0i32; ZMM_CH]; MV]; P];
        let flip = if self.output_hwc && self.kernel.signed_input() {
            0x80
        } else {
            0
        };
        let offsets = self.direct_offsets(src, p0, np);
        for pt in 0..np.div_ceil(P) {
            let first = pt * P;
            let b: Rows<'_, P> = match src {
                Source::Cols(cols) => Rows {
                    ptr: core::array::from_fn(|i| cols[(first + i).min(np - 1) * kp..][..kp].as_ptr()),
                    segs: &[0],
                    seg_len: kp,
                },
                Source::Direct { base, taps, cg, .. } => Rows {
                    ptr: tile_pointers(base, &offsets, first, np),
                    segs: taps,
                    seg_len: cg,
                },
            };
            // SAFETY: the caller's contract; every row lies inside its buffer (see Source).
            unsafe { tile_bcast::<MV, P>(w, wstride, &b, &mut acc) };
            let count = P.min(np - first);
            for j in 0..MV {
                let m0 = (v0 + j) * ZMM_CH;
                if m0 >= mg {
                    break;
                }
                let valid = ZMM_CH.min(mg - m0);
                let at = gi * self.mgp + m0;
                let bias: &[i32; ZMM_CH] = self.bias[at..at + ZMM_CH].try_into().expect("padded bias");
                let mult: &[f32; ZMM_CH] = self.mult[at..at + ZMM_CH].try_into().expect("padded mult");
                let c0 = gi * mg + m0;
                for (pi, a) in acc.iter().enumerate().take(count) {
                    // SAFETY: AVX-512 F, the caller's contract.
                    let q = unsafe { requantise16(&a[j], bias, mult, self.zy, flip) };
                    self.store(yb, &q, valid, c0, p0 + first + pi, pixels);
                }
            }
        }
    }
}

/// Weight rows (`group`·`mgp` rows of `kp` bytes) repacked per group and 4 output channels in
/// blocks of `kb` bytes of k, the 4 channels' blocks side by side: `[g][m/4][k/kb][4 m][kb k]`.
fn pack_m4(w_rows: &[i8], group: usize, mgp: usize, kp: usize, kb: usize) -> Vec<i8> {
    let mut p = vec![0i8; w_rows.len()];
    for g in 0..group {
        for mq in 0..mgp / 4 {
            for kq in 0..kp / kb {
                for mi in 0..4 {
                    let src = &w_rows[(g * mgp + mq * 4 + mi) * kp + kq * kb..][..kb];
                    p[((g * (mgp / 4) + mq) * (kp / kb) + kq) * 4 * kb + mi * kb..][..kb].copy_from_slice(src);
                }
            }
        }
    }
    p
}

/// Where [`QConv::block`] reads its input rows (see [`Rows`]). Every row a tile reads lies inside
/// the buffer: an im2col block holds whole rows for every tile (its tail rows zeroed); the
/// padded input holds every tap of every output pixel, by the output geometry.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// An im2col block: one row of K bytes per pixel.
    Cols(&'a [u8]),
    /// The padded channels-last input, read in place: pixel `(oy, ox)` starts at
    /// `(oy·sy·wp + ox·sx)·cg`, tap `t` at `taps[t]` from there.
    Direct {
        base: &'a [u8],
        taps: &'a [usize],
        wp: usize,
        cg: usize,
        ow: usize,
    },
}

/// The first bytes of `P` pixels of a direct-path tile, from the block's pixel `first` on
/// ([`QConv::direct_offsets`], checked against `base`); pixels past the block's `np` read its last
/// one (their sums are discarded).
#[inline(always)]
fn tile_pointers<const P: usize>(base: &[u8], offsets: &[usize; P_BLOCK], first: usize, np: usize) -> [*const u8; P] {
    let mut ptr = [base.as_ptr(); P];
    for (i, p) in ptr.iter_mut().enumerate() {
        *p = base.as_ptr().wrapping_add(offsets[(first + i).min(np - 1)]);
    }
    ptr
}

/// Bytes of slack after the scratch buffers for [`copy_run`]'s 16-byte moves.
const RUN_SLACK: usize = 16;

/// Copy `n` bytes from `src[from..]` to `dst[at..]`, 16 bytes at a time and inline (a call to
/// `memcpy` costs more than the move for the runs of an im2col row: a kernel row of a few
/// channels, or one tap of a few dozen). A run of at most 16 bytes moves as one 16-byte load and
/// store when both buffers have room; the bytes written past the run are rewritten by the caller,
/// which fills im2col rows in increasing order and its padding after the runs. A longer run ends
/// with a 16-byte move that overlaps the one before.
#[inline(always)]
fn copy_run(dst: &mut [u8], at: usize, src: &[u8], from: usize, n: usize) {
    if n <= 16 {
        if at + 16 <= dst.len() && from + 16 <= src.len() {
            move16(dst, at, src, from);
        } else {
            dst[at..at + n].copy_from_slice(&src[from..from + n]);
        }
        return;
    }
    let mut i = 0;
    while i + 16 <= n {
        move16(dst, at + i, src, from + i);
        i += 16;
    }
    if i < n {
        let (a, f) = (at + n - 16, from + n - 16);
        move16(dst, a, src, f);
    }
}

/// A channels-last map (`cg` bytes a pixel, `h`·`w` pixels) into the inside of a padded one of
/// `cgp` bytes a pixel and `wp` pixels a row, from its first inside pixel (`out`). The bytes past
/// `cg` in each padded pixel are the direct path's pad channels: their weights are zero, so
/// whatever a move leaves there counts nothing.
#[inline(never)]
fn pixels_into_padded(out: &mut [u8], x: &[u8], cg: usize, cgp: usize, [h, w]: [usize; 2], wp: usize) {
    for yy in 0..h {
        let row = &mut out[yy * wp * cgp..][..w * cgp];
        if cgp == cg {
            row.copy_from_slice(&x[yy * w * cg..][..w * cg]);
            continue;
        }
        for xx in 0..w {
            copy_run(row, xx * cgp, x, (yy * w + xx) * cg, cg);
        }
    }
}

/// `cg` channel planes of `h`·`w` bytes into the inside of a padded channels-last map of `cgp`
/// bytes a pixel and `wp` pixels a row (as [`pixels_into_padded`]), each byte's sign bit flipped
/// by `flip`; row by row, so the row's channels-last bytes stay in L1 while every plane writes
/// into them.
#[inline(never)]
fn planes_into_padded(out: &mut [u8], xg: &[u8], cg: usize, cgp: usize, [h, w]: [usize; 2], wp: usize, flip: u8) {
    assert!(cg <= cgp, "{cg} channels in pixels of {cgp} bytes");
    let hw = h * w;
    #[cfg(target_arch = "aarch64")]
    if cgp.is_multiple_of(16) && w >= 16 && cg > 0 {
        for yy in 0..h {
            let row = &mut out[yy * wp * cgp..][..w * cgp];
            planes_row_neon(row, xg, cg, cgp, hw, yy * w, w, flip);
        }
        return;
    }
    for yy in 0..h {
        let row = &mut out[yy * wp * cgp..][..w * cgp];
        for c in 0..cg {
            let plane = &xg[c * hw + yy * w..][..w];
            let dst = row.as_mut_ptr();
            for (x, &v) in plane.iter().enumerate() {
                // SAFETY: x < w and c < cg <= cgp, so x·cgp + c < w·cgp = row.len()
                unsafe { *dst.add(x * cgp + c) = v ^ flip };
            }
        }
    }
}

/// One row of [`planes_into_padded`] on aarch64 (`cgp` a multiple of 16, `w` ≥ 16): 16 pixels
/// × 16 channels at a time, 16 loads, a 16 × 16 byte transposition in registers (`TRN1`/`TRN2`
/// on bytes, then 16, 32 and 64 bits) and 16 stores; the row's last 16 pixels overlap the block
/// before them where `w` is not a multiple of 16. A block of channels past `cg` reads the last
/// plane again: it fills pad channels, whose weights are zero.
#[cfg(target_arch = "aarch64")]
#[allow(clippy::too_many_arguments)]
fn planes_row_neon(row: &mut [u8], xg: &[u8], cg: usize, cgp: usize, hw: usize, start: usize, w: usize, flip: u8) {
    use std::arch::aarch64::*;
    // SAFETY: NEON is part of aarch64; every load reads 16 bytes of a checked 16-byte slice, and
    // every store writes a checked 16-byte array.
    unsafe {
        let f = vdupq_n_u8(flip);
        let mut x0 = 0;
        loop {
            let x = x0.min(w - 16);
            for cb in (0..cg).step_by(16) {
                let mut r = [f; 16];
                for (j, v) in r.iter_mut().enumerate() {
                    let c = (cb + j).min(cg - 1);
                    *v = veorq_u8(vld1q_u8(xg[c * hw + start + x..][..16].as_ptr()), f);
                }
                // bytes: a[2k] even pixels, a[2k + 1] odd pixels, channels 2k, 2k + 1
                let mut a = r;
                for k in 0..8 {
                    a[2 * k] = vtrn1q_u8(r[2 * k], r[2 * k + 1]);
                    a[2 * k + 1] = vtrn2q_u8(r[2 * k], r[2 * k + 1]);
                }
                // 16 bits: b[4g + i] pixels ≡ i (mod 4), channels 4g..4g + 4
                let mut b = a;
                for g in 0..4 {
                    let (e, o) = (4 * g, 4 * g + 1);
                    let u = |v: uint8x16_t| vreinterpretq_u16_u8(v);
                    b[e] = vreinterpretq_u8_u16(vtrn1q_u16(u(a[e]), u(a[e + 2])));
                    b[e + 1] = vreinterpretq_u8_u16(vtrn1q_u16(u(a[o]), u(a[o + 2])));
                    b[e + 2] = vreinterpretq_u8_u16(vtrn2q_u16(u(a[e]), u(a[e + 2])));
                    b[e + 3] = vreinterpretq_u8_u16(vtrn2q_u16(u(a[o]), u(a[o + 2])));
                }
                // 32 bits: c[8h + k] pixels k and k + 8 (k < 8), channels 8h..8h + 8
                let mut c = b;
                for h in 0..2 {
                    for k in 0..4 {
                        let u = |v: uint8x16_t| vreinterpretq_u32_u8(v);
                        let (lo, hi) = (b[8 * h + k], b[8 * h + k + 4]);
                        c[8 * h + k] = vreinterpretq_u8_u32(vtrn1q_u32(u(lo), u(hi)));
                        c[8 * h + k + 4] = vreinterpretq_u8_u32(vtrn2q_u32(u(lo), u(hi)));
                    }
                }
                // 64 bits: pixel k's 16 channels, and pixel k + 8's
                for k in 0..8 {
                    let u = |v: uint8x16_t| vreinterpretq_u64_u8(v);
                    let (lo, hi) = (u(c[k]), u(c[k + 8]));
                    let (pk, pk8) = (vtrn1q_u64(lo, hi), vtrn2q_u64(lo, hi));
                    vst1q_u8(
                        as_array_mut::<16>(row, (x + k) * cgp + cb).as_mut_ptr(),
                        vreinterpretq_u8_u64(pk),
                    );
                    vst1q_u8(
                        as_array_mut::<16>(row, (x + k + 8) * cgp + cb).as_mut_ptr(),
                        vreinterpretq_u8_u64(pk8),
                    );
                }
            }
            if x + 16 >= w {
                break;
            }
            x0 += 16;
        }
    }
}

/// One group's channel planes (`cg` planes of `hw` bytes) channels-last into `out`, with the
/// sign bit flipped for a signed kernel; in blocks of [`TRANSPOSE_BLOCK`] pixels, so the block's
/// channels-last bytes stay in L1 while every channel plane writes into them.
#[inline(never)]
fn to_channels_last(out: &mut [u8], xg: &[u8], cg: usize, hw: usize, signed: bool) {
    let flip = if signed { 0x80 } else { 0 };
    if cg == 1 {
        for (d, s) in out.iter_mut().zip(xg) {
            *d = s ^ flip;
        }
        return;
    }
    let mut i0 = 0;
    while i0 < hw {
        let n = TRANSPOSE_BLOCK.min(hw - i0);
        let block = &mut out[i0 * cg..][..n * cg];
        for c in 0..cg {
            let plane = &xg[c * hw + i0..][..n];
            let dst = block.as_mut_ptr();
            for (i, &v) in plane.iter().enumerate() {
                // SAFETY: i < n and c < cg, so i·cg + c < n·cg = block.len()
                unsafe { *dst.add(i * cg + c) = v ^ flip };
            }
        }
        i0 += n;
    }
}

/// `N` bytes of `buf` from `at`, as an array: a move of a whole array compiles to vector loads
/// and stores in place, where `copy_from_slice` calls out to `memcpy`.
#[inline(always)]
pub(super) fn as_array_mut<const N: usize>(buf: &mut [u8], at: usize) -> &mut [u8; N] {
    (&mut buf[at..at + N]).try_into().expect("N bytes")
}

/// Move 16 bytes from `src[from..]` to `dst[at..]` (see [`as_array_mut`]).
#[inline(always)]
fn move16(dst: &mut [u8], at: usize, src: &[u8], from: usize) {
    let s: &[u8; 16] = src[from..from + 16].try_into().expect("16 bytes");
    *as_array_mut::<16>(dst, at) = *s;
}

/// Set `n` bytes of `dst` from `at` to `byte`, 16 at a time and inline, under the same contract
/// as [`copy_run`] (a short run may write 16 bytes; the caller writes in increasing order).
#[inline(always)]
fn fill_run(dst: &mut [u8], at: usize, n: usize, byte: u8) {
    if n == 0 {
        return;
    }
    if n < 16 {
        if at + 16 <= dst.len() {
            *as_array_mut::<16>(dst, at) = [byte; 16];
        } else {
            dst[at..at + n].fill(byte);
        }
        return;
    }
    let v = [byte; 16];
    let mut i = 0;
    while i + 16 <= n {
        *as_array_mut::<16>(dst, at + i) = v;
        i += 16;
    }
    if i < n {
        *as_array_mut::<16>(dst, at + n - 16) = v;
    }
}

/// One pixel's [`M_TILE`] channels: `saturate(round_half_even((acc + bias) · mult) + zy)`, with
/// the sign bit flipped by `flip` (the signed domain of a chained consumer). Rounding by the f32
/// magic number (exact ties-to-even for |v| < 2^22, and vectorisable without SSE4.1); fixed-size
/// arrays and no closure, so the compiler requantises the tile's channels as vectors.
#[cfg(not(target_arch = "aarch64"))]
#[inline(always)]
fn requantise(acc: &[i32; M_TILE], bias: &[i32; M_TILE], mult: &[f32; M_TILE], zy: u8, flip: u8) -> [u8; M_TILE] {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let zy = zy as f32;
    let mut q = [0u8; M_TILE];
    for m in 0..M_TILE {
        let v = (acc[m].wrapping_add(bias[m])) as f32 * mult[m];
        let v = v.clamp(-1.0e6, 1.0e6);
        let r = (v + MAGIC) - MAGIC;
        q[m] = ((r + zy).clamp(0.0, 255.0) as u8) ^ flip;
    }
    q
}

/// [`requantise`] in NEON (every aarch64 core has it): the same f32 product, `FCVTNS` rounds it
/// half to even (saturating, as the clamp), then saturating narrowing to 16 and 8 bits.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn requantise(acc: &[i32; M_TILE], bias: &[i32; M_TILE], mult: &[f32; M_TILE], zy: u8, flip: u8) -> [u8; M_TILE] {
    use std::arch::aarch64::*;
    let mut q = [0u8; M_TILE];
    // SAFETY: NEON is part of aarch64; every pointer reads or writes 4 or 8 elements of an
    // array of M_TILE = 8.
    unsafe {
        let z = vdupq_n_s32(zy as i32);
        let lo = requantise4(acc.as_ptr(), bias.as_ptr(), mult.as_ptr(), z);
        let hi = requantise4(acc.as_ptr().add(4), bias.as_ptr().add(4), mult.as_ptr().add(4), z);
        let u = vqmovun_s16(vcombine_s16(lo, hi));
        vst1_u8(q.as_mut_ptr(), veor_u8(u, vdup_n_u8(flip)));
    }
    q
}

/// Four channels of [`requantise`]: `(acc + bias) · mult`, rounded half to even, `+ zy`, as
/// saturated 16-bit lanes.
///
/// # Safety
/// Each pointer reads four elements.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn requantise4(
    acc: *const i32,
    bias: *const i32,
    mult: *const f32,
    z: std::arch::aarch64::int32x4_t,
) -> std::arch::aarch64::int16x4_t {
    use std::arch::aarch64::*;
    unsafe {
        let a = vaddq_s32(vld1q_s32(acc), vld1q_s32(bias));
        let v = vmulq_f32(vcvtq_f32_s32(a), vld1q_f32(mult));
        vqmovn_s32(vqaddq_s32(vcvtnq_s32_f32(v), z))
    }
}

/// Scratch kept between runs: the channels-last input, one im2col block, the padded input and
/// the taps' offsets of the direct path.
#[derive(Debug, Clone, Default)]
struct Scratch {
    hwc: Vec<u8>,
    cols: Vec<u8>,
    /// The channels-last input inside its padding, for the direct path.
    padded: Vec<u8>,
    /// Offset of each kernel tap in `padded`, from a pixel's first tap.
    taps: Vec<usize>,
    /// The plane kernel's padded input plane as 4-byte windows, and one padded row of bytes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    quads: Vec<u32>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    prow: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct QConvState {
    scratch: Scratch,
}

impl OpState for QConvState {
    fn eval(&mut self, _ctx: &EvalContext, op: &dyn Op, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let op = op
            .downcast_ref::<QConv>()
            .context("QConvState paired with another op")?;
        op.eval_with(&mut self.scratch, inputs)
    }

    fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
        Ok(())
    }
}

impl QConv {
    fn eval_with(&self, scratch: &mut Scratch, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape();
        if shape.len() != 4 || shape[1] != self.c_in {
            bail!("{FUSED_OP}: input shape {shape:?}, expected [n, {}, h, w]", self.c_in);
        }
        let (n, h, w) = (shape[0], shape[2], shape[3]);
        let [oh, ow] = self.geometry.output_hw(h, w)?;
        let mut y = unsafe { Tensor::uninitialized::<u8>(&[n, self.m_out, oh, ow])? };
        {
            let xs = x.try_as_plain_ram()?;
            let xs = xs.as_slice::<u8>()?;
            let mut ys = y.try_as_plain_ram_mut()?;
            let ys = ys.as_slice_mut::<u8>()?;
            self.run(scratch, xs, n, h, w, ys)?;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl Op for QConv {
    fn name(&self) -> StaticName {
        "QConvInt8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let layout = |hwc: bool| if hwc { "channels-last" } else { "NCHW" };
        let plane = self.runs_on_planes();
        Ok(vec![format!(
            "kernel {:?}{}, {}x{} taps, {} → {} channels, group {}, strides {:?}, dilations {:?}, in {}, out {}",
            self.kernel,
            if plane { " (plane)" } else { "" },
            self.geometry.kernel[0],
            self.geometry.kernel[1],
            self.c_in,
            self.m_out,
            self.geometry.group,
            self.geometry.strides,
            self.geometry.dilations,
            layout(self.input_hwc),
            layout(self.output_hwc)
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QConv {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.eval_with(&mut Scratch::default(), inputs)
    }

    op_out_of_plan!();

    fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
        Ok(Some(Box::new(QConvState::default())))
    }
}

impl TypedOp for QConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        if s.rank() != 4 {
            bail!("{FUSED_OP}: input of rank {}", s.rank());
        }
        let (h, w) = (s[2].to_usize()?, s[3].to_usize()?);
        let [oh, ow] = self.geometry.output_hw(h, w)?;
        Ok(tvec!(u8::fact([s[0].to_usize()?, self.m_out, oh, ow])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels this CPU runs, the portable one first.
    fn kernels_here() -> Vec<Kernel> {
        let mut k = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl") {
                k.push(Kernel::X86Vnni);
            }
            if std::arch::is_x86_feature_detected!("avxvnni") {
                k.push(Kernel::X86AvxVnni);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                k.push(Kernel::X86Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                k.push(Kernel::ArmDot);
            }
            k.push(Kernel::ArmSmlal);
        }
        #[cfg(target_arch = "arm")]
        {
            if kernels::armv7::has_neon() {
                k.push(Kernel::ArmV7Neon);
            }
        }
        k
    }

    struct Rng(u32);
    impl Rng {
        fn byte(&mut self) -> u8 {
            self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (self.0 >> 24) as u8
        }
    }

    struct Case {
        geometry: Geometry,
        c_in: usize,
        m_out: usize,
        h: usize,
        w: usize,
        x: Vec<u8>,
        wts: Vec<i8>,
        bias: Vec<i32>,
        sw: Vec<f32>,
    }

    const SX: f32 = 0.02;
    const ZX: u8 = 119;
    const SY: f32 = 0.05;
    const ZY: u8 = 131;

    #[allow(clippy::too_many_arguments)]
    fn case(
        rng: &mut Rng,
        c_in: usize,
        m_out: usize,
        k: usize,
        stride: usize,
        dil: usize,
        group: usize,
        hw: [usize; 2],
    ) -> Case {
        let pad = dil * (k - 1) / 2;
        let geometry = Geometry {
            kernel: [k, k],
            strides: [stride, stride],
            dilations: [dil, dil],
            pads: [pad, pad, pad, pad],
            group,
        };
        let cg = c_in / group;
        Case {
            geometry,
            c_in,
            m_out,
            h: hw[0],
            w: hw[1],
            x: (0..c_in * hw[0] * hw[1]).map(|_| rng.byte()).collect(),
            wts: (0..m_out * cg * k * k).map(|_| (rng.byte() as i8) / 2).collect(),
            bias: (0..m_out).map(|i| (i as i32 - 3) * 97).collect(),
            sw: (0..m_out).map(|i| 0.004 + 0.0005 * i as f32).collect(),
        }
    }

    fn op(c: &Case, kernel: Kernel) -> QConv {
        let k = c.geometry.kernel;
        let wshape = [c.m_out, c.c_in / c.geometry.group, k[0], k[1]];
        QConv::with_kernel(
            kernel,
            c.geometry.clone(),
            c.c_in,
            &wshape,
            &c.wts,
            SX,
            ZX,
            &c.sw,
            SY,
            ZY,
            Some(&c.bias),
        )
        .unwrap()
    }

    /// The convolution by its definition: Σ (x − zx)·w + b, times sx·sw/sy, rounded half to
    /// even, plus zy, saturated (NCHW).
    fn reference(c: &Case) -> Vec<u8> {
        let g = &c.geometry;
        let [oh, ow] = g.output_hw(c.h, c.w).unwrap();
        let cg = c.c_in / g.group;
        let mg = c.m_out / g.group;
        let mut y = vec![0u8; c.m_out * oh * ow];
        for m in 0..c.m_out {
            let gi = m / mg;
            let mult = (SX as f64 * c.sw[m] as f64 / SY as f64) as f32;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = c.bias[m];
                    for ci in 0..cg {
                        for ky in 0..g.kernel[0] {
                            for kx in 0..g.kernel[1] {
                                let iy = (oy * g.strides[0] + ky * g.dilations[0]) as isize - g.pads[0] as isize;
                                let ix = (ox * g.strides[1] + kx * g.dilations[1]) as isize - g.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                    continue;
                                }
                                let xv =
                                    c.x[((gi * cg + ci) * c.h + iy as usize) * c.w + ix as usize] as i32 - ZX as i32;
                                let wv = c.wts[((m * cg + ci) * g.kernel[0] + ky) * g.kernel[1] + kx] as i32;
                                acc += xv * wv;
                            }
                        }
                    }
                    let v = (acc as f32 * mult).clamp(-1.0e6, 1.0e6).round_ties_even();
                    y[(m * oh + oy) * ow + ox] = (v + ZY as f32).clamp(0.0, 255.0) as u8;
                }
            }
        }
        y
    }

    fn run(op: &QConv, c: &Case, x: &[u8]) -> Vec<u8> {
        let [oh, ow] = c.geometry.output_hw(c.h, c.w).unwrap();
        let mut y = vec![0u8; c.m_out * oh * ow];
        op.run(&mut Scratch::default(), x, 1, c.h, c.w, &mut y).unwrap();
        y
    }

    fn cases() -> Vec<Case> {
        let mut rng = Rng(5);
        vec![
            case(&mut rng, 1, 16, 3, 1, 1, 1, [19, 23]),
            case(&mut rng, 16, 32, 3, 2, 1, 1, [17, 12]),
            case(&mut rng, 24, 12, 3, 1, 2, 1, [11, 14]),
            case(&mut rng, 48, 9, 3, 1, 4, 1, [13, 13]),
            case(&mut rng, 64, 1, 1, 1, 1, 1, [9, 7]),
            case(&mut rng, 7, 7, 5, 1, 1, 7, [12, 10]),
            case(&mut rng, 32, 80, 3, 1, 1, 1, [9, 11]),
            case(&mut rng, 16, 48, 3, 2, 2, 1, [15, 13]),
            case(&mut rng, 12, 24, 3, 1, 1, 1, [10, 9]),
            // the plane kernel's: one input channel per group, few output channels, wide
            // kernels (the anomaly model's 17×17 1 → 7 and 21×21 depthwise), ragged rows
            case(&mut rng, 1, 7, 17, 1, 1, 1, [23, 41]),
            case(&mut rng, 7, 7, 21, 1, 1, 7, [26, 53]),
            case(&mut rng, 1, 2, 5, 1, 1, 1, [6, 150]),
            case(&mut rng, 3, 9, 7, 1, 1, 3, [13, 17]),
            case(&mut rng, 1, 12, 5, 1, 1, 1, [9, 30]),
            // one 16-byte im2col row a pixel (1 channel, 3×3, stride 2)
            case(&mut rng, 1, 8, 3, 2, 1, 1, [12, 15]),
            // the aarch64 plane kernel's: few outputs from several input channels (neu_segment's
            // last convolution, 9 → 1 over 3×3), one, two and three (a padded pass of 4)
            case(&mut rng, 9, 1, 3, 1, 1, 1, [20, 37]),
            case(&mut rng, 6, 2, 3, 1, 1, 1, [9, 21]),
            case(&mut rng, 5, 3, 3, 1, 1, 1, [7, 40]),
            // the aarch64 direct path on channels padded to 16 (24 → 32 at 1×1, no padding),
            // and not at a stride (12 stays 12)
            case(&mut rng, 12, 12, 3, 2, 1, 1, [13, 11]),
            case(&mut rng, 24, 8, 1, 1, 1, 1, [7, 9]),
            // rows of 16 pixels and more into the padded map (aarch64: transposed 16 × 16 in
            // registers, the last block of a row overlapping), 12 and 10 outputs (a tile of 4
            // and of 2 channels), 24 channels padded to 32 (the second block of 16 half pads)
            case(&mut rng, 16, 12, 3, 1, 1, 1, [6, 37]),
            case(&mut rng, 24, 10, 3, 1, 1, 1, [5, 21]),
            // the x86 plane kernel's several planes: 15 → 1 and 6 → 6 over 3×3 (neu_segment's
            // full-resolution convolutions), 16 → 8 (its limits) over 5×5, two groups of 3 → 5
            // (a channel plane half padding on every layout), ragged rows
            case(&mut rng, 15, 1, 3, 1, 1, 1, [11, 203]),
            case(&mut rng, 6, 6, 3, 1, 1, 1, [14, 29]),
            case(&mut rng, 16, 8, 5, 1, 1, 1, [9, 35]),
            case(&mut rng, 6, 10, 3, 1, 1, 2, [8, 19]),
            // 17 input channels (on x86 up to 32), and what it leaves: 9 outputs, 1×1
            case(&mut rng, 17, 2, 3, 1, 1, 1, [7, 12]),
            case(&mut rng, 6, 9, 3, 1, 1, 1, [7, 12]),
            case(&mut rng, 6, 4, 1, 1, 1, 1, [7, 12]),
            // and 33 input channels
            case(&mut rng, 33, 2, 3, 1, 1, 1, [7, 12]),
        ]
    }

    #[test]
    fn the_aarch64_direct_path_pads_thin_channels_by_a_third_at_most() {
        let cgp = |kernel| cases().iter().map(|c| op(c, kernel).cgp).collect::<Vec<usize>>();
        let cg: Vec<usize> = cases().iter().map(|c| c.c_in / c.geometry.group).collect();
        for kernel in [Kernel::ArmDot, Kernel::ArmSmlal] {
            // 24 → 32 twice, 12 → 16 once, 15 → 16; 1, 9, 6, 5, 17, the grouped ones and 12 at
            // stride 2 stay
            let want = [
                1, 16, 32, 48, 64, 1, 32, 16, 16, 1, 1, 1, 1, 1, 1, 9, 6, 5, 12, 32, 16, 32, 16, 6, 16, 3, 17, 6, 6, 33,
            ];
            assert_eq!(cgp(kernel), want, "{kernel:?}");
        }
        for kernel in [
            Kernel::X86Vnni,
            Kernel::X86AvxVnni,
            Kernel::X86Avx2,
            Kernel::Portable,
            Kernel::ArmV7Neon,
        ] {
            assert_eq!(cgp(kernel), cg, "{kernel:?}");
        }
    }

    #[test]
    fn every_kernel_computes_the_definition() {
        // named in the log, so a cross run shows which kernels its core ran (tests/cross.sh)
        eprintln!("integer kernels tested: {:?}", kernels_here());
        for (i, c) in cases().iter().enumerate() {
            let want = reference(c);
            for kernel in kernels_here() {
                assert_eq!(run(&op(c, kernel), c, &c.x), want, "case {i}, kernel {kernel:?}");
            }
        }
    }

    /// The kernels that add two products in 16 bits (SMLAL, VMLAL, AVX2's `vpmaddubsw`) at the
    /// edge of their weight range: every input byte 255, weights ±64 with neighbouring channels
    /// (one 16-bit pair) of one sign, so each pair sums to ±32 640 while the convolution's own
    /// sum cancels (a pair that saturated would move every output). One weight past AVX2's range
    /// sends that convolution to the portable kernel, still exact.
    #[test]
    fn the_16_bit_pair_kernels_are_exact_at_the_edge_of_their_weight_range() {
        let mut rng = Rng(11);
        // 9 outputs: not on the x86 plane kernel (16-bit words, no pairs)
        let mut c = case(&mut rng, 32, 9, 3, 1, 1, 1, [6, 7]);
        c.x.fill(255);
        c.sw.fill(0.05);
        for (i, v) in c.wts.iter_mut().enumerate() {
            let ch = i / 9 % 32;
            *v = if ch / 2 % 2 == 0 { 64 } else { -64 };
        }
        let want = reference(&c);
        for kernel in kernels_here() {
            assert_eq!(run(&op(&c, kernel), &c, &c.x), want, "kernel {kernel:?}");
        }
        c.wts[9 * 3] = -65;
        let want = reference(&c);
        for kernel in kernels_here() {
            let o = op(&c, kernel);
            if kernel == Kernel::X86Avx2 {
                assert_eq!(o.kernel, Kernel::Portable, "a weight of -65 is past AVX2's pairs");
            }
            assert_eq!(run(&o, &c, &c.x), want, "kernel {kernel:?}");
        }
    }

    /// The plane kernels take exactly the convolutions of few outputs from few input channels
    /// per group, with the tile width their channels need; the definition test above checks
    /// their bytes.
    #[test]
    fn the_plane_kernels_take_few_outputs_from_few_input_channels() {
        let mv = |kernel| cases().iter().map(|c| op(c, kernel).plane_mv).collect::<Vec<usize>>();
        // on x86 one input channel with up to 8 outputs, or over more than one tap up to 16
        // with up to 8 or up to 32 with up to 2 (17 → 2, not 33 → 2); never at a stride or a
        // dilation
        assert_eq!(
            mv(Kernel::X86Vnni),
            [0, 0, 0, 0, 0, 1, 0, 0, 0, 8, 1, 2, 4, 0, 0, 1, 2, 4, 0, 0, 0, 0, 1, 8, 8, 8, 2, 0, 0, 0]
        );
        // on 256 bits up to 16 channels from one input channel, in passes of 8: the first case
        // (1 → 16) and 1 → 12
        for kernel in [Kernel::X86AvxVnni, Kernel::X86Avx2] {
            assert_eq!(
                mv(kernel),
                [8, 0, 0, 0, 0, 1, 0, 0, 0, 8, 1, 2, 4, 8, 0, 1, 2, 4, 0, 0, 0, 0, 1, 8, 8, 8, 2, 0, 0, 0],
                "{kernel:?}"
            );
        }
        // on aarch64 any input channels with up to 4 outputs, up to 8 in two passes of 4 from
        // up to 16 input channels (1 → 7, 6 → 6, 16 → 8, two groups of 3 → 5); never at a
        // stride, a dilation or 1×1, nor past 8 outputs
        for kernel in [Kernel::ArmDot, Kernel::ArmSmlal] {
            assert_eq!(
                mv(kernel),
                [0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 1, 2, 4, 0, 0, 1, 2, 4, 0, 0, 0, 0, 1, 4, 4, 4, 2, 0, 0, 2],
                "{kernel:?}"
            );
        }
        for kernel in [Kernel::Portable, Kernel::ArmV7Neon] {
            assert!(cases().iter().all(|c| op(c, kernel).plane_mv == 0), "{kernel:?}");
        }
    }

    /// Filter banks use the whole i8 range (the anomaly model's do): the plane kernels take
    /// them on every x86 kernel, AVX2's included (16-bit products), and on the aarch64 ones,
    /// SMLAL's included (which elsewhere refuses −128), and stay exact: on aarch64 with pairs of
    /// taps in 16 bits where no channel weighs both taps of a pair −128 (the first two banks
    /// and the fourth: one −128 in a pair, under inputs of 0, the largest products), one tap at
    /// a time where one does (the third). The fourth reads 15 input planes (4 and 8 words of
    /// channels on x86).
    #[test]
    fn the_plane_kernels_are_exact_over_the_whole_weight_range() {
        let mut rng = Rng(13);
        let mut banks = [
            case(&mut rng, 1, 7, 17, 1, 1, 1, [21, 37]),
            case(&mut rng, 7, 7, 21, 1, 1, 7, [24, 29]),
            case(&mut rng, 1, 3, 5, 1, 1, 1, [11, 19]),
            case(&mut rng, 15, 1, 3, 1, 1, 1, [13, 45]),
        ];
        for c in banks.iter_mut() {
            for (i, v) in c.wts.iter_mut().enumerate() {
                *v = match i % 5 {
                    0 => i8::MIN,
                    1 => i8::MAX,
                    _ => (rng.byte() as i8).max(-127),
                };
            }
            c.x.iter_mut().step_by(3).for_each(|v| *v = 255);
            c.x.iter_mut().skip(1).step_by(3).for_each(|v| *v = 0);
        }
        // the third bank's second channel: −128 at its first two taps
        banks[2].wts[25] = i8::MIN;
        banks[2].wts[26] = i8::MIN;
        for (i, c) in banks.iter().enumerate() {
            let want = reference(c);
            for kernel in kernels_here() {
                let o = op(c, kernel);
                if matches!(
                    kernel,
                    Kernel::X86Vnni | Kernel::X86AvxVnni | Kernel::X86Avx2 | Kernel::ArmDot | Kernel::ArmSmlal
                ) {
                    assert_eq!(o.kernel, kernel, "bank {i}");
                    assert!(o.plane_mv > 0, "bank {i} on the plane kernel, {kernel:?}");
                }
                if matches!(kernel, Kernel::ArmDot | Kernel::ArmSmlal) {
                    assert_eq!(o.plane_pairs, i != 2, "bank {i}, {kernel:?}");
                }
                assert_eq!(run(&o, c, &c.x), want, "bank {i}, kernel {kernel:?}");
            }
        }
        // the pairing itself, wherever the tests run
        for (i, c) in banks.iter().enumerate() {
            assert_eq!(op(c, Kernel::ArmSmlal).plane_pairs, i != 2, "bank {i}");
        }
    }

    #[test]
    fn the_channels_last_hand_off_changes_no_byte() {
        let mut rng = Rng(9);
        // 24 channels between them (padded to 32 on aarch64), and 20 (a tile of 4 channels)
        for mid_c in [24, 20] {
            let a = case(&mut rng, 8, mid_c, 3, 2, 1, 1, [21, 18]);
            let [ah, aw] = a.geometry.output_hw(a.h, a.w).unwrap();
            let b = case(&mut rng, mid_c, 16, 3, 1, 2, 1, [ah, aw]);
            for kernel in kernels_here() {
                let (op_a, op_b) = (op(&a, kernel), op(&b, kernel));
                let mid = run(&op_a, &a, &a.x);
                let want = run(&op_b, &b, &mid);
                let (mut op_a, mut op_b) = (op_a, op_b);
                op_a.output_hwc = true;
                op_b.input_hwc = true;
                let mid_hwc = run(&op_a, &a, &a.x);
                assert_ne!(mid_hwc, mid, "the hand-off is channels-last");
                assert_eq!(run(&op_b, &b, &mid_hwc), want, "kernel {kernel:?}");
            }
        }
    }
}
