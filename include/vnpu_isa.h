/* SPDX-License-Identifier: MIT */
/*
 * vnpu ISA: the program format the compute engine executes (VNPU_OPC_EXEC) and the `.vnpu` container that
 * carries a compiled model (program + weights + tensor specs) from the compiler to the runtime.
 *
 * One definition, shared by the compiler (compiler/), the program interpreter (qemu-device/engine/ops/), the
 * runtime (libruntime/) and the driver where it validates. docs/program-format.md describes the same layout in
 * prose. All structures are fixed-width, naturally aligned, little-endian, with explicit padding (no hidden
 * holes, no tail padding); every reserved field must be zero.
 *
 * A program is layer-level: each op is a whole tensor operation (a convolution, a pooling, a broadcast add) over
 * tensors that live in "binding slots". A binding slot is a region of the job's device address space whose base
 * address is supplied at EXEC time (the binding table); the program only ever names (binding, offset) pairs, so
 * the same program runs wherever the runtime places weights, inputs, outputs and scratch memory.
 *
 * Program layout (all offsets relative to the start of the program, all 8-byte aligned):
 *
 *   struct vnpu_isa_program                   header
 *   struct vnpu_isa_binding[num_bindings]     at bindings_offset
 *   struct vnpu_isa_tensor[num_tensors]       at tensors_offset
 *   op stream (num_ops records)               at ops_offset, ops_size bytes
 *
 * Op record: struct vnpu_isa_op, then __u32 tensor indices [num_inputs + num_outputs] (zero-padded to a
 * multiple of 8 bytes), then the opcode's attribute struct (attr_size bytes). `size` covers all three.
 */
#ifndef VNPU_ISA_H
#define VNPU_ISA_H

#include <linux/types.h>

/* ---- Program ---------------------------------------------------------------------------------------------- */
#define VNPU_ISA_PROGRAM_MAGIC 0x50504e56u /* "VNPP" in memory order */
#define VNPU_ISA_VERSION_MAJOR 1 /* incompatible changes */
#define VNPU_ISA_VERSION_MINOR 2 /* compatible additions (a reader accepts any minor of its major) */

#define VNPU_ISA_MAX_RANK 8
#define VNPU_ISA_MAX_OPERANDS 64 /* inputs + outputs of one op */
#define VNPU_ISA_MAX_BINDINGS 64 /* = VNPU_EXEC_MAX_BINDINGS */
#define VNPU_ISA_MAX_TENSORS (1u << 20)
#define VNPU_ISA_MAX_OPS (1u << 20)

struct vnpu_isa_program {
	__u32 magic; /* VNPU_ISA_PROGRAM_MAGIC */
	__u16 version_major; /* VNPU_ISA_VERSION_MAJOR */
	__u16 version_minor;
	__u32 header_size; /* sizeof(struct vnpu_isa_program); larger values are reserved for minor additions */
	__u32 flags; /* must be 0 */
	__u32 num_bindings; /* binding slots referenced; EXEC must supply at least this many, 1..MAX_BINDINGS */
	__u32 num_tensors; /* entries of the tensor table */
	__u32 num_ops; /* op records in the op stream */
	__u32 rsvd0; /* must be 0 */
	__u64 bindings_offset; /* struct vnpu_isa_binding[num_bindings] */
	__u64 tensors_offset; /* struct vnpu_isa_tensor[num_tensors] */
	__u64 ops_offset; /* first op record */
	__u64 ops_size; /* bytes of the op stream */
	__u64 total_size; /* bytes of the whole program (= EXEC prog_len) */
	__u64 rsvd1; /* must be 0 */
};

enum vnpu_isa_binding_kind {
	VNPU_ISA_BIND_WEIGHTS = 1, /* constants: the container's weights blob, read-only */
	VNPU_ISA_BIND_INPUT = 2, /* one model input, written by the host before EXEC */
	VNPU_ISA_BIND_OUTPUT = 3, /* one model output, read by the host after EXEC */
	VNPU_ISA_BIND_SCRATCH = 4, /* intermediate activations; contents undefined before and after */
};

struct vnpu_isa_binding {
	__u32 kind; /* enum vnpu_isa_binding_kind */
	__u32 flags; /* must be 0 */
	__u64 size; /* bytes the slot must provide; every tensor in the slot lies inside [0, size) */
};

/* A dense, row-major tensor in a binding slot. */
struct vnpu_isa_tensor {
	__u32 binding; /* < num_bindings */
	__u8 dtype; /* enum vnpu_dtype (vnpu_hw.h); programs of ISA 1.0 use VNPU_DTYPE_F32 only */
	__u8 rank; /* 0..VNPU_ISA_MAX_RANK; rank 0 is a scalar (one element) */
	__u16 rsvd0; /* must be 0 */
	__u64 offset; /* byte offset inside the binding, multiple of 4 */
	__u32 dims[VNPU_ISA_MAX_RANK]; /* dims[0..rank); unused entries must be 0; a dimension may be 0 (empty) */
};

enum vnpu_isa_opcode {
	VNPU_ISA_OP_CONV = 1, /* in: X[N,C,H,W], W[M,C/g,kh,kw], (B[M]); out: Y[N,M,OH,OW]. attr: vnpu_isa_conv */
	VNPU_ISA_OP_CONV_TRANSPOSE = 2, /* in: X[N,C,H,W], W[C,M/g,kh,kw], (B[M]); out: Y. attr: vnpu_isa_conv */
	VNPU_ISA_OP_POOL = 3, /* in: X[N,C,H,W]; out: Y[N,C,OH,OW]. attr: vnpu_isa_pool */
	VNPU_ISA_OP_MATMUL = 4, /* in: A[..,M,K], B[..,K,N], (C bcast to [M,N]); out: Y[..,M,N]. vnpu_isa_matmul */
	VNPU_ISA_OP_BINARY = 5, /* in: A, B (numpy broadcasting to Y's shape); out: Y. attr: vnpu_isa_binary */
	VNPU_ISA_OP_UNARY = 6, /* in: X; out: Y (same shape). attr: vnpu_isa_unary */
	VNPU_ISA_OP_CHANNEL_AFFINE = 7, /* in: X[N,C,...], S[C], T[C]; out: Y = act(X*S[c]+T[c]). vnpu_isa_affine */
	VNPU_ISA_OP_CONCAT = 8, /* in: X0..Xn-1; out: Y, joined along axis. attr: vnpu_isa_axis */
	VNPU_ISA_OP_SLICE = 9, /* in: X; out: Y[i..] = X[start + i*step]. attr: vnpu_isa_slice */
	VNPU_ISA_OP_TRANSPOSE = 10, /* in: X; out: Y with Y.dims[i] = X.dims[perm[i]]. attr: vnpu_isa_transpose */
	VNPU_ISA_OP_COPY = 11, /* in: X; out: Y with the same element count (reshape into another slot). no attr */
	VNPU_ISA_OP_RESIZE = 12, /* in: X; out: Y. attr: vnpu_isa_resize */
	VNPU_ISA_OP_SOFTMAX = 13, /* in: X; out: Y (same shape). attr: vnpu_isa_softmax */
	/* ISA 1.1 */
	VNPU_ISA_OP_REDUCE = 14, /* in: X; out: Y (X's rank, reduced dims 1). attr: vnpu_isa_reduce */
	VNPU_ISA_OP_NORM = 15, /* in: X, S, B; out: Y = (X - mean) / sqrt(var + eps) * S + B. vnpu_isa_norm */
	VNPU_ISA_OP_PAD = 16, /* in: X; out: Y (X padded per dim). attr: vnpu_isa_pad */
	VNPU_ISA_OP_COUNT_, /* one past the last opcode */
};

/* Fused activation applied to an op's result (CONV, CONV_TRANSPOSE, MATMUL, BINARY, CHANNEL_AFFINE, UNARY). */
enum vnpu_isa_act {
	VNPU_ISA_ACT_NONE = 0, /* y = x */
	VNPU_ISA_ACT_RELU = 1, /* max(x, 0) */
	VNPU_ISA_ACT_SIGMOID = 2, /* 1 / (1 + exp(-x)) */
	VNPU_ISA_ACT_SILU = 3, /* x * sigmoid(x) */
	VNPU_ISA_ACT_CLIP = 4, /* min(max(x, alpha), beta) */
	VNPU_ISA_ACT_LEAKY_RELU = 5, /* x < 0 ? alpha * x : x */
	VNPU_ISA_ACT_TANH = 6,
	VNPU_ISA_ACT_EXP = 7,
	VNPU_ISA_ACT_LOG = 8,
	VNPU_ISA_ACT_SQRT = 9,
	VNPU_ISA_ACT_NEG = 10,
	VNPU_ISA_ACT_ABS = 11,
	VNPU_ISA_ACT_HARD_SIGMOID = 12, /* max(0, min(1, alpha * x + beta)) */
	VNPU_ISA_ACT_RECIPROCAL = 13,
	VNPU_ISA_ACT_ELU = 14, /* x < 0 ? alpha * (exp(x) - 1) : x */
	VNPU_ISA_ACT_FLOOR = 15,
	VNPU_ISA_ACT_CEIL = 16,
	VNPU_ISA_ACT_ROUND = 17, /* to nearest, ties to even */
	/* ISA 1.1 */
	VNPU_ISA_ACT_ERF = 18,
	VNPU_ISA_ACT_GELU = 19, /* x * (1 + erf(x / sqrt(2))) / 2 */
	VNPU_ISA_ACT_SOFTPLUS = 20, /* log(1 + exp(x)) */
	VNPU_ISA_ACT_SOFTSIGN = 21, /* x / (1 + |x|) */
	VNPU_ISA_ACT_HARD_SWISH = 22, /* x * max(0, min(1, x / 6 + 1 / 2)) */
	VNPU_ISA_ACT_SELU = 23, /* beta * (x <= 0 ? alpha * (exp(x) - 1) : x) */
	VNPU_ISA_ACT_SIN = 24,
	VNPU_ISA_ACT_COS = 25,
	VNPU_ISA_ACT_TAN = 26,
	VNPU_ISA_ACT_ASIN = 27,
	VNPU_ISA_ACT_ACOS = 28,
	VNPU_ISA_ACT_ATAN = 29,
	VNPU_ISA_ACT_SINH = 30,
	VNPU_ISA_ACT_COSH = 31,
	VNPU_ISA_ACT_ASINH = 32,
	VNPU_ISA_ACT_ACOSH = 33,
	VNPU_ISA_ACT_ATANH = 34,
	VNPU_ISA_ACT_SIGN = 35, /* 1, -1 or x (0, -0, NaN) */
	VNPU_ISA_ACT_CELU = 36, /* max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) */
	VNPU_ISA_ACT_THRESHOLDED_RELU = 37, /* x > alpha ? x : 0 */
	VNPU_ISA_ACT_SHRINK = 38, /* x < -alpha ? x + beta : (x > alpha ? x - beta : 0) (alpha = lambd, beta = bias) */
	VNPU_ISA_ACT_COUNT_,
};

struct vnpu_isa_op {
	__u16 opcode; /* enum vnpu_isa_opcode */
	__u8 num_inputs; /* tensor operands read */
	__u8 num_outputs; /* tensor operands written */
	__u32 size; /* bytes of this record including operands and attributes, multiple of 8 */
	__u32 attr_size; /* bytes of attributes = sizeof the opcode's attribute struct (0 for COPY) */
	__u32 flags; /* must be 0 */
};

#define VNPU_ISA_CONV_F_BIAS (1u << 0) /* a third input holds the bias */
/* 1.2, CONV only: a last input R of Y's shape is added before the activation: Y = act(conv + bias + R) */
#define VNPU_ISA_CONV_F_RESIDUAL (1u << 1)

/* CONV and CONV_TRANSPOSE (2-D; the compiler lowers 1-D to H = 1). Index 0 is H, 1 is W. */
struct vnpu_isa_conv {
	__u32 group; /* >= 1, divides C and M */
	__u32 flags; /* VNPU_ISA_CONV_F_* */
	__u32 act; /* enum vnpu_isa_act */
	__u32 rsvd0; /* must be 0 */
	float act_alpha, act_beta; /* activation parameters */
	__u32 stride[2]; /* >= 1 */
	__u32 dilation[2]; /* >= 1 */
	__u32 pad_begin[2]; /* top, left */
	__u32 pad_end[2]; /* bottom, right */
	__u32 output_padding[2]; /* CONV_TRANSPOSE only (< stride); 0 for CONV */
};

enum vnpu_isa_pool_kind {
	VNPU_ISA_POOL_MAX = 0,
	VNPU_ISA_POOL_AVG = 1, /* divisor excludes padding unless VNPU_ISA_POOL_F_COUNT_PAD */
};

#define VNPU_ISA_POOL_F_COUNT_PAD (1u << 0)

/* POOL: output dims (OH, OW) come from Y's tensor; the window may run past the padded input (ceil_mode). */
struct vnpu_isa_pool {
	__u32 kind; /* enum vnpu_isa_pool_kind */
	__u32 flags; /* VNPU_ISA_POOL_F_* */
	__u32 kernel[2]; /* >= 1 */
	__u32 stride[2]; /* >= 1 */
	__u32 dilation[2]; /* >= 1 (max pooling only; 1 for average) */
	__u32 pad_begin[2];
	__u32 pad_end[2];
};

#define VNPU_ISA_MATMUL_F_TRANS_A (1u << 0) /* A is stored [..,K,M] */
#define VNPU_ISA_MATMUL_F_TRANS_B (1u << 1) /* B is stored [..,N,K] */
#define VNPU_ISA_MATMUL_F_BIAS (1u << 2) /* a third input C, broadcast to [M,N] */

/* MATMUL: Y = act(alpha * op(A) op(B) + beta * C); batch dims broadcast numpy-style (ranks >= 2; rank-1 A/B are
 * lowered by the compiler to [1,K] / [K,1]). */
struct vnpu_isa_matmul {
	__u32 flags; /* VNPU_ISA_MATMUL_F_* */
	__u32 act; /* enum vnpu_isa_act */
	float alpha, beta;
	float act_alpha, act_beta;
};

enum vnpu_isa_binary_kind {
	VNPU_ISA_BIN_ADD = 0,
	VNPU_ISA_BIN_SUB = 1,
	VNPU_ISA_BIN_MUL = 2,
	VNPU_ISA_BIN_DIV = 3,
	VNPU_ISA_BIN_MAX = 4,
	VNPU_ISA_BIN_MIN = 5,
	VNPU_ISA_BIN_POW = 6,
	VNPU_ISA_BIN_FMOD = 7, /* C fmod: the result has the sign of the dividend */
	VNPU_ISA_BIN_PRELU = 8, /* ISA 1.1: a < 0 ? a * b : a (b is the slope) */
	VNPU_ISA_BIN_COUNT_,
};

struct vnpu_isa_binary {
	__u32 kind; /* enum vnpu_isa_binary_kind */
	__u32 act; /* enum vnpu_isa_act applied to the result */
	float act_alpha, act_beta;
};

/* UNARY: Y = act(X). */
struct vnpu_isa_unary {
	__u32 act; /* enum vnpu_isa_act, != NONE */
	__u32 rsvd0; /* must be 0 */
	float act_alpha, act_beta;
};

/* CHANNEL_AFFINE (inference BatchNormalization that could not be folded into a convolution). */
struct vnpu_isa_affine {
	__u32 act; /* enum vnpu_isa_act */
	__u32 rsvd0; /* must be 0 */
	float act_alpha, act_beta;
};

/* CONCAT. */
struct vnpu_isa_axis {
	__u32 axis; /* < rank of the operands */
	__u32 rsvd0; /* must be 0 */
};

/* SLICE: Y.dims come from Y's tensor; every index start[d] + i * step[d] (i < Y.dims[d]) is inside X. */
struct vnpu_isa_slice {
	__s64 start[VNPU_ISA_MAX_RANK];
	__s64 step[VNPU_ISA_MAX_RANK]; /* != 0 */
};

struct vnpu_isa_transpose {
	__u32 perm[VNPU_ISA_MAX_RANK]; /* a permutation of 0..rank-1; unused entries 0 */
};

enum vnpu_isa_resize_mode {
	VNPU_ISA_RESIZE_NEAREST = 0,
	VNPU_ISA_RESIZE_LINEAR = 1, /* (multi)linear over every dimension whose size changes */
	VNPU_ISA_RESIZE_CUBIC = 2, /* 1.2: cubic convolution (4 taps per dim, coefficient cubic_a), separable */
};

enum vnpu_isa_resize_coord {
	VNPU_ISA_COORD_HALF_PIXEL = 0, /* x_in = (x_out + 0.5) / scale - 0.5 */
	VNPU_ISA_COORD_ASYMMETRIC = 1, /* x_in = x_out / scale */
	VNPU_ISA_COORD_ALIGN_CORNERS = 2, /* x_in = x_out * (in - 1) / (out - 1) */
	VNPU_ISA_COORD_PYTORCH_HALF_PIXEL = 3, /* half_pixel, but 0 when out == 1 */
	VNPU_ISA_COORD_TF_HALF_PIXEL_FOR_NN = 4, /* x_in = (x_out + 0.5) / scale */
};

enum vnpu_isa_resize_nearest {
	VNPU_ISA_NEAREST_ROUND_PREFER_FLOOR = 0,
	VNPU_ISA_NEAREST_ROUND_PREFER_CEIL = 1,
	VNPU_ISA_NEAREST_FLOOR = 2,
	VNPU_ISA_NEAREST_CEIL = 3,
};

#define VNPU_ISA_RESIZE_F_SIZES (1u << 0) /* the model gave output sizes: scale = Y.dims[d] / X.dims[d] (double) */
/* 1.2, CUBIC only: taps outside the input get weight 0 and the others are renormalised (ONNX exclude_outside) */
#define VNPU_ISA_RESIZE_F_EXCLUDE_OUTSIDE (1u << 1)

/* RESIZE: Y.dims come from Y's tensor; scale[d] is the (possibly non-integral) factor the coordinate
 * transformation divides by (the model's scale, or Y.dims[d] / X.dims[d] when the model gives sizes). */
struct vnpu_isa_resize {
	__u32 mode; /* enum vnpu_isa_resize_mode */
	__u32 coord; /* enum vnpu_isa_resize_coord */
	union {
		__u32 nearest; /* enum vnpu_isa_resize_nearest (NEAREST; unused by LINEAR) */
		float cubic_a; /* CUBIC: the cubic coefficient A (ONNX cubic_coeff_a, -0.75 by default), finite */
	};
	__u32 flags; /* VNPU_ISA_RESIZE_F_* */
	float scale[VNPU_ISA_MAX_RANK]; /* > 0 for d < rank; ignored with VNPU_ISA_RESIZE_F_SIZES */
};

#define VNPU_ISA_SOFTMAX_F_LOG (1u << 0) /* LogSoftmax */
#define VNPU_ISA_SOFTMAX_F_FLATTEN (1u << 1) /* opset < 13: normalise over all dims >= axis together */

struct vnpu_isa_softmax {
	__u32 axis; /* < rank */
	__u32 flags; /* VNPU_ISA_SOFTMAX_F_* */
};

enum vnpu_isa_reduce_kind {
	VNPU_ISA_REDUCE_SUM = 0, /* empty reduction: 0 */
	VNPU_ISA_REDUCE_MEAN = 1, /* empty: NaN */
	VNPU_ISA_REDUCE_MAX = 2, /* empty: -inf; NaN propagates */
	VNPU_ISA_REDUCE_MIN = 3, /* empty: +inf; NaN propagates */
	VNPU_ISA_REDUCE_PROD = 4, /* empty: 1 */
	VNPU_ISA_REDUCE_L1 = 5, /* sum |x| */
	VNPU_ISA_REDUCE_L2 = 6, /* sqrt(sum x^2) */
	VNPU_ISA_REDUCE_SUM_SQUARE = 7, /* sum x^2 */
	VNPU_ISA_REDUCE_LOG_SUM = 8, /* log(sum x) */
	VNPU_ISA_REDUCE_LOG_SUM_EXP = 9, /* log(sum exp(x)), computed as max + log(sum exp(x - max)) */
	VNPU_ISA_REDUCE_COUNT_,
};

/* REDUCE: Y has X's rank; Y.dims[d] is 1 where bit d of `axes` is set, X.dims[d] elsewhere. Sums in double. */
struct vnpu_isa_reduce {
	__u32 kind; /* enum vnpu_isa_reduce_kind */
	__u32 axes; /* bit d: reduce over dim d (d < rank); 0 is allowed (an elementwise pass of the finaliser) */
	__u32 rsvd0, rsvd1; /* must be 0 */
};

/* NORM (layer normalisation): over each group of the trailing dims >= axis (inner = their element count),
 * Y = (X - mean) / sqrt(var + epsilon) * S[j] + B[j] with the biased variance; S and B hold `inner` elements. */
struct vnpu_isa_norm {
	__u32 axis; /* < rank of X (X.rank >= 1) */
	float epsilon; /* >= 0, finite */
	__u32 act; /* enum vnpu_isa_act applied to the result */
	__u32 rsvd0; /* must be 0 */
	float act_alpha, act_beta;
};

enum vnpu_isa_pad_mode {
	VNPU_ISA_PAD_CONSTANT = 0, /* outside cells are `value` */
	VNPU_ISA_PAD_REFLECT = 1, /* mirror without the edge: needs begin, end < X.dims[d] */
	VNPU_ISA_PAD_EDGE = 2, /* repeat the edge: needs X.dims[d] >= 1 where padded */
};

/* PAD: Y.dims[d] = begin[d] + X.dims[d] + end[d]; Y[i] = X[i - begin] inside, else per mode. */
struct vnpu_isa_pad {
	__u32 mode; /* enum vnpu_isa_pad_mode */
	float value; /* CONSTANT only */
	__u32 begin[VNPU_ISA_MAX_RANK];
	__u32 end[VNPU_ISA_MAX_RANK];
};

/* Attribute bytes an opcode expects; -1 for an unknown opcode. */
static inline int vnpu_isa_attr_size(unsigned int opcode)
{
	switch (opcode) {
	case VNPU_ISA_OP_CONV:
	case VNPU_ISA_OP_CONV_TRANSPOSE:
		return sizeof(struct vnpu_isa_conv);
	case VNPU_ISA_OP_POOL:
		return sizeof(struct vnpu_isa_pool);
	case VNPU_ISA_OP_MATMUL:
		return sizeof(struct vnpu_isa_matmul);
	case VNPU_ISA_OP_BINARY:
		return sizeof(struct vnpu_isa_binary);
	case VNPU_ISA_OP_UNARY:
		return sizeof(struct vnpu_isa_unary);
	case VNPU_ISA_OP_CHANNEL_AFFINE:
		return sizeof(struct vnpu_isa_affine);
	case VNPU_ISA_OP_CONCAT:
		return sizeof(struct vnpu_isa_axis);
	case VNPU_ISA_OP_SLICE:
		return sizeof(struct vnpu_isa_slice);
	case VNPU_ISA_OP_TRANSPOSE:
		return sizeof(struct vnpu_isa_transpose);
	case VNPU_ISA_OP_COPY:
		return 0;
	case VNPU_ISA_OP_RESIZE:
		return sizeof(struct vnpu_isa_resize);
	case VNPU_ISA_OP_SOFTMAX:
		return sizeof(struct vnpu_isa_softmax);
	case VNPU_ISA_OP_REDUCE:
		return sizeof(struct vnpu_isa_reduce);
	case VNPU_ISA_OP_NORM:
		return sizeof(struct vnpu_isa_norm);
	case VNPU_ISA_OP_PAD:
		return sizeof(struct vnpu_isa_pad);
	default:
		return -1;
	}
}

/* Bytes of one element of a dtype; 0 for an unknown dtype. */
static inline unsigned int vnpu_isa_dtype_size(unsigned int dtype)
{
	return dtype == 0 /* VNPU_DTYPE_F32 */ ? 4 : 0;
}

/* ---- .vnpu container ------------------------------------------------------------------------------------- */
/*
 * File layout: struct vnpu_file_header at offset 0, then struct vnpu_file_section[num_sections] at
 * sections_offset, then the section payloads (each 64-byte aligned, non-overlapping, inside the file).
 * Exactly one section of each kind STRINGS, TENSORS, WEIGHTS, PROGRAM; unknown kinds are skipped by readers of
 * the same major version. `crc32` is the CRC-32 (ISO-HDLC, zlib's crc32()) of the whole file with the crc32
 * field read as zero.
 */
#define VNPU_FILE_MAGIC "VNPUMODL" /* 8 bytes, no terminator in the file */
#define VNPU_FILE_VERSION_MAJOR 1
#define VNPU_FILE_VERSION_MINOR 0
#define VNPU_FILE_ALIGN 64
#define VNPU_FILE_MAX_SECTIONS 64

struct vnpu_file_header {
	__u8 magic[8]; /* VNPU_FILE_MAGIC */
	__u16 version_major; /* VNPU_FILE_VERSION_MAJOR */
	__u16 version_minor;
	__u32 header_size; /* sizeof(struct vnpu_file_header) */
	__u64 file_size; /* bytes of the whole file */
	__u64 sections_offset; /* struct vnpu_file_section[num_sections] */
	__u32 num_sections; /* 4..VNPU_FILE_MAX_SECTIONS */
	__u32 crc32; /* see above */
	__u32 flags; /* must be 0 */
	__u32 rsvd0; /* must be 0 */
	__u64 rsvd1[2]; /* must be 0 */
};

enum vnpu_file_section_kind {
	VNPU_FILE_SEC_STRINGS = 1, /* UTF-8 names referenced by (offset, len), not terminated */
	VNPU_FILE_SEC_TENSORS = 2, /* struct vnpu_file_tensor[]: the model's inputs, then its outputs */
	VNPU_FILE_SEC_WEIGHTS = 3, /* contents of the program's VNPU_ISA_BIND_WEIGHTS slot */
	VNPU_FILE_SEC_PROGRAM = 4, /* the program (struct vnpu_isa_program ...), EXEC'd as is */
	VNPU_FILE_SEC_PRODUCER = 5, /* optional: UTF-8 text naming the compiler and the source model */
};

struct vnpu_file_section {
	__u32 kind; /* enum vnpu_file_section_kind */
	__u32 flags; /* must be 0 */
	__u64 offset; /* from the start of the file, multiple of VNPU_FILE_ALIGN */
	__u64 size; /* bytes */
};

enum vnpu_file_tensor_kind {
	VNPU_FILE_TENSOR_INPUT = 1,
	VNPU_FILE_TENSOR_OUTPUT = 2,
};

/* A model input or output: where it lives (binding slot of the matching kind, offset) and its shape. */
struct vnpu_file_tensor {
	__u32 name_offset; /* into the STRINGS section */
	__u32 name_len; /* 1..1024 bytes, unique among inputs and among outputs */
	__u8 kind; /* enum vnpu_file_tensor_kind */
	__u8 dtype; /* enum vnpu_dtype */
	__u8 rank; /* 0..VNPU_ISA_MAX_RANK */
	__u8 rsvd0; /* must be 0 */
	__u32 binding; /* program binding slot (kind INPUT for inputs, OUTPUT for outputs) */
	__u64 offset; /* byte offset inside the binding */
	__u64 size; /* bytes = product(dims) * dtype size */
	__u64 dims[VNPU_ISA_MAX_RANK]; /* dims[0..rank); unused entries 0 */
};

#ifdef __cplusplus
static_assert(sizeof(struct vnpu_isa_program) == 80, "program header layout");
static_assert(sizeof(struct vnpu_isa_binding) == 16, "binding layout");
static_assert(sizeof(struct vnpu_isa_tensor) == 48, "tensor layout");
static_assert(sizeof(struct vnpu_isa_op) == 16, "op layout");
static_assert(sizeof(struct vnpu_isa_conv) == 64, "conv layout");
static_assert(sizeof(struct vnpu_isa_pool) == 48, "pool layout");
static_assert(sizeof(struct vnpu_isa_matmul) == 24, "matmul layout");
static_assert(sizeof(struct vnpu_isa_resize) == 48, "resize layout");
static_assert(sizeof(struct vnpu_isa_slice) == 128, "slice layout");
static_assert(sizeof(struct vnpu_isa_reduce) == 16, "reduce layout");
static_assert(sizeof(struct vnpu_isa_norm) == 24, "norm layout");
static_assert(sizeof(struct vnpu_isa_pad) == 72, "pad layout");
static_assert(sizeof(struct vnpu_file_header) == 64, "file header layout");
static_assert(sizeof(struct vnpu_file_section) == 24, "section layout");
static_assert(sizeof(struct vnpu_file_tensor) == 96, "file tensor layout");
#elif !defined(__KERNEL__)
_Static_assert(sizeof(struct vnpu_isa_program) == 80, "program header layout");
_Static_assert(sizeof(struct vnpu_isa_binding) == 16, "binding layout");
_Static_assert(sizeof(struct vnpu_isa_tensor) == 48, "tensor layout");
_Static_assert(sizeof(struct vnpu_isa_op) == 16, "op layout");
_Static_assert(sizeof(struct vnpu_isa_conv) == 64, "conv layout");
_Static_assert(sizeof(struct vnpu_isa_pool) == 48, "pool layout");
_Static_assert(sizeof(struct vnpu_isa_matmul) == 24, "matmul layout");
_Static_assert(sizeof(struct vnpu_isa_resize) == 48, "resize layout");
_Static_assert(sizeof(struct vnpu_isa_slice) == 128, "slice layout");
_Static_assert(sizeof(struct vnpu_isa_reduce) == 16, "reduce layout");
_Static_assert(sizeof(struct vnpu_isa_norm) == 24, "norm layout");
_Static_assert(sizeof(struct vnpu_isa_pad) == 72, "pad layout");
_Static_assert(sizeof(struct vnpu_file_header) == 64, "file header layout");
_Static_assert(sizeof(struct vnpu_file_section) == 24, "section layout");
_Static_assert(sizeof(struct vnpu_file_tensor) == 96, "file tensor layout");
#endif

#endif /* VNPU_ISA_H */
