// The U-Net's 2D convolution ("SAME" padding, stride 1) on oneDNN, exposed as XLA FFI handlers.
//
// Conventions (the JAX side, pallas_kernels/conv_onednn.py, guarantees them):
//   x        (N, H, W, Ci)    NHWC activations, float32 or bfloat16 (the compute operand dtype)
//   weights  (KH, KW, Ci, Co) HWIO, float32 or bfloat16, KH and KW odd ("SAME" = (K - 1) / 2 each
//            side); converted to x's dtype by the reorder into the primitive's blocked layout,
//            which every call does anyway (so float32 master weights need no separate cast)
//   bias     (Co)             float32
//   y        (N, H, W, Co)    float32, or bfloat16 (only with bfloat16 operands: the next
//                             convolution's operand, written at half the bytes; the values that
//                             convolution would round a float32 y to)
//   dx, dweights              float32: oneDNN accumulates in float32 and writes float32.
// Handlers:
//   OnednnConvForward          y  = conv(x, weights) + bias, then max(y, 0) when the attribute
//                              `relu` is 1 (a oneDNN post-op: no separate pass over y)
//   OnednnConvBackwardData     dx = conv_transpose(g, weights)           (g: cotangent of y, NHWC)
//   OnednnConvBackwardWeights  dweights = correlate(x, g)                (the bias gradient is a
//                              plain sum of g, done in XLA in float32 so that it never sees the
//                              rounded bfloat16 cotangent)
//
// Activations and cotangents stay in the caller's NHWC buffers: oneDNN's brgemm convolutions
// (AVX-512, AVX512-BF16, AMX) run on NHWC directly, so only the weights (at most 2.4 M values) are
// reordered into the blocked layout the chosen implementation wants, on every call.
//
// Primitives are built once per (pass, shape, dtype) and kept for the life of the process: building
// one JIT-compiles its kernel (milliseconds), running it costs nothing extra. Every call gets its
// own scratchpad (user scratchpad mode), so one primitive may run from several threads at once (the
// data-parallel shard_map calls a handler from one XLA thread per device). Threads come from
// oneDNN's OpenMP runtime: each call runs on the threads it leases from one process-wide budget
// (`ThreadBudget`: OMP_NUM_THREADS, else the CPU count; the attribute `thread_share` n asks for
// 1/n of it), so that calls XLA runs at the same time never oversubscribe the cores.

#include <omp.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "huge_pages.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

enum class Pass : int { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// The shape of one convolution: everything a primitive depends on.
struct ConvShape {
  int64_t n, h, w, ci, co, kh, kw;
  // The OpenMP threads the primitive runs on (oneDNN partitions its work for the thread count at
  // creation, so a primitive is built per count).
  int threads = 1;
  memory::data_type operand;  // f32 or bf16
  // The forward pass's y (f32 or bf16) and whether ReLU follows the bias; the backward passes
  // are always built from the plain float32-result forward.
  memory::data_type result = memory::data_type::f32;
  bool relu = false;

  memory::dims SrcDims() const { return {n, ci, h, w}; }
  memory::dims DstDims() const { return {n, co, h, w}; }
  memory::dims WeightDims() const { return {co, ci, kh, kw}; }
  memory::dims Strides() const { return {1, 1}; }
  memory::dims Padding() const { return {(kh - 1) / 2, (kw - 1) / 2}; }
};

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int,
                       int, bool, int>;

struct KeyHash {
  size_t operator()(const Key& key) const {
    size_t seed = 0;
    std::apply([&seed](auto... part) {
      ((seed ^= std::hash<int64_t>()(static_cast<int64_t>(part)) + 0x9e3779b97f4a7c15ULL +
                (seed << 6) + (seed >> 2)),
       ...);
    }, key);
    return seed;
  }
};

Key MakeKey(Pass pass, const ConvShape& s) {
  return {static_cast<int>(pass), s.n, s.h, s.w, s.ci, s.co, s.kh, s.kw,
          static_cast<int>(s.operand), static_cast<int>(s.result), s.relu, s.threads};
}

// A built primitive and the weights layout it reads or writes (possibly blocked).
struct Plan {
  dnnl::primitive primitive;
  memory::desc weights;     // the primitive's weights (or weight-gradient) layout
  memory::desc scratchpad;  // per-call scratch memory it needs
};

dnnl::primitive_attr Attr(bool relu = false) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (relu) {
    dnnl::post_ops post_ops;
    post_ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(post_ops);
  }
  return attr;
}

memory::desc Activations(const memory::dims& dims, memory::data_type type) {
  return memory::desc(dims, type, Tag::nhwc);
}

// The forward primitive descriptor; with a float32 result and no ReLU also the "hint" the
// backward passes are built from.
dnnl::convolution_forward::primitive_desc ForwardDesc(const ConvShape& s) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Activations(s.SrcDims(), s.operand), memory::desc(s.WeightDims(), s.operand, Tag::any),
      memory::desc({s.co}, memory::data_type::f32, Tag::a), Activations(s.DstDims(), s.result),
      s.Strides(), s.Padding(), s.Padding(), Attr(s.relu));
}

Plan BuildPlan(Pass pass, const ConvShape& s) {
  auto forward = ForwardDesc(s);
  switch (pass) {
    case Pass::kForward:
      return {dnnl::convolution_forward(forward), forward.weights_desc(),
              forward.scratchpad_desc()};
    case Pass::kBackwardData: {
      dnnl::convolution_backward_data::primitive_desc pd(
          Engine(), dnnl::algorithm::convolution_direct,
          Activations(s.SrcDims(), memory::data_type::f32),
          memory::desc(s.WeightDims(), s.operand, Tag::any), Activations(s.DstDims(), s.operand),
          s.Strides(), s.Padding(), s.Padding(), forward, Attr());
      return {dnnl::convolution_backward_data(pd), pd.weights_desc(), pd.scratchpad_desc()};
    }
    case Pass::kBackwardWeights: {
      dnnl::convolution_backward_weights::primitive_desc pd(
          Engine(), dnnl::algorithm::convolution_direct, Activations(s.SrcDims(), s.operand),
          memory::desc(s.WeightDims(), memory::data_type::f32, Tag::any),
          Activations(s.DstDims(), s.operand), s.Strides(), s.Padding(), s.Padding(), forward,
          Attr());
      return {dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(),
              pd.scratchpad_desc()};
    }
  }
  throw std::logic_error("unknown pass");
}

const Plan& GetPlan(Pass pass, const ConvShape& s) {
  static std::mutex mutex;
  static std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash> plans;
  const Key key = MakeKey(pass, s);
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = plans.find(key);
    if (it != plans.end()) return *it->second;
  }
  // Built outside the lock (JIT compilation takes a while); a concurrent builder of the same key
  // only wastes its work, the first one stored wins.
  auto plan = std::make_unique<Plan>(BuildPlan(pass, s));
  std::lock_guard<std::mutex> lock(mutex);
  auto [it, inserted] = plans.emplace(key, std::move(plan));
  return *it->second;
}

// The threads all oneDNN calls of the process may use at once: OMP_NUM_THREADS, else the CPU count.
// XLA runs independent operations concurrently (the backward pass's input and weight gradients,
// the kernel subnets), each on a thread of its own pool, and each call here would otherwise start
// a full OpenMP team: two teams on two cores wait on each other's barriers, which made bfloat16
// train steps on AMX 1.3-5x slower and erratic. So a call leases threads from this budget (as many
// as it asks for that are free, at least one, waiting while none is) and runs on those alone.
class ThreadBudget {
 public:
  static ThreadBudget& Get() {
    static ThreadBudget budget(std::max(1, omp_get_max_threads()));
    return budget;
  }
  int total() const { return total_; }
  int Acquire(int wanted) {
    std::unique_lock<std::mutex> lock(mutex_);
    available_.wait(lock, [this] { return free_ > 0; });
    const int threads = std::clamp(wanted, 1, free_);
    free_ -= threads;
    return threads;
  }
  void Release(int threads) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_ += threads;
    }
    available_.notify_all();
  }

 private:
  explicit ThreadBudget(int total) : total_(total), free_(total) {}
  const int total_;
  int free_;
  std::mutex mutex_;
  std::condition_variable available_;
};

// Threads leased for one call (1/`share` of the budget, at least one), set as the calling
// thread's OpenMP team size for the primitive's creation and execution; returned when it goes out
// of scope.
class ThreadLease {
 public:
  explicit ThreadLease(int64_t share)
      : threads_(ThreadBudget::Get().Acquire(static_cast<int>(
            ThreadBudget::Get().total() / std::max<int64_t>(share, 1)))) {
    omp_set_num_threads(threads_);
  }
  ~ThreadLease() { ThreadBudget::Get().Release(threads_); }
  ThreadLease(const ThreadLease&) = delete;
  ThreadLease& operator=(const ThreadLease&) = delete;
  int threads() const { return threads_; }

 private:
  const int threads_;
};

memory::desc UserWeights(const ConvShape& s, memory::data_type type) {
  return memory::desc(s.WeightDims(), type, Tag::hwio);
}

// Runs `plan` with `args`, after reordering user weights into the plan's layout (forward and
// backward-data) or the plan's weight gradient back into HWIO (backward-weights).
void Execute(const Plan& plan, std::unordered_map<int, memory> args, const ConvShape& s,
             void* user_weights, memory::data_type weight_type, bool weights_are_output) {
  dnnl::stream stream(Engine());
  memory user(UserWeights(s, weight_type), Engine(), user_weights);
  const int weight_arg = weights_are_output ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS;
  memory internal = user;
  if (plan.weights != user.get_desc()) internal = memory(plan.weights, Engine());
  if (!weights_are_output && internal != user) {
    dnnl::reorder(user, internal).execute(stream, user, internal);
  }
  args[weight_arg] = internal;
  memory scratch(plan.scratchpad, Engine());
  args[DNNL_ARG_SCRATCHPAD] = scratch;
  plan.primitive.execute(stream, args);
  if (weights_are_output && internal != user) {
    dnnl::reorder(internal, user).execute(stream, internal, user);
  }
  stream.wait();
}

ffi::Error OperandType(ffi::DataType type, memory::data_type* out) {
  switch (type) {
    case ffi::DataType::F32:
      *out = memory::data_type::f32;
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      *out = memory::data_type::bf16;
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("conv_onednn: operands must be float32 or bfloat16");
  }
}

// Reads the shape from an NHWC activation (x or g) and the HWIO weight dimensions, checking that
// they agree, and the operand dtype from the activation.
ffi::Error ReadShape(ffi::AnyBuffer activations, ffi::Span<const int64_t> weights,
                     bool activations_are_src, ConvShape* s) {
  auto a = activations.dimensions();
  if (a.size() != 4 || weights.size() != 4) {
    return ffi::Error::InvalidArgument("conv_onednn: activations must be NHWC, weights HWIO");
  }
  *s = ConvShape{a[0], a[1], a[2], weights[2], weights[3], weights[0], weights[1]};
  if (a[3] != (activations_are_src ? s->ci : s->co) || s->kh % 2 == 0 || s->kw % 2 == 0) {
    return ffi::Error::InvalidArgument("conv_onednn: shapes of activations and weights disagree");
  }
  return OperandType(activations.element_type(), &s->operand);
}

template <typename F>
ffi::Error Guarded(F&& body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("conv_onednn: ") + e.what());
  }
}

ffi::Error ForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer weights, ffi::Buffer<ffi::F32> bias,
                       ffi::Result<ffi::AnyBuffer> y, int64_t relu, int64_t thread_share) {
  ConvShape s;
  if (auto e = ReadShape(x, weights.dimensions(), true, &s); e.failure()) return e;
  memory::data_type weight_type;
  if (auto e = OperandType(weights.element_type(), &weight_type); e.failure()) return e;
  if (auto e = OperandType(y->element_type(), &s.result); e.failure()) return e;
  if (s.result == memory::data_type::bf16 && s.operand != memory::data_type::bf16) {
    return ffi::Error::InvalidArgument("conv_onednn: a bfloat16 result needs bfloat16 operands");
  }
  s.relu = relu != 0;
  advise_huge_pages(y->untyped_data(), y->size_bytes());
  return Guarded([&] {
    ThreadLease lease(thread_share);
    s.threads = lease.threads();
    const Plan& plan = GetPlan(Pass::kForward, s);
    Execute(plan,
            {{DNNL_ARG_SRC, memory(Activations(s.SrcDims(), s.operand), Engine(), x.untyped_data())},
             {DNNL_ARG_BIAS, memory(memory::desc({s.co}, memory::data_type::f32, Tag::a), Engine(),
                                    bias.typed_data())},
             {DNNL_ARG_DST, memory(Activations(s.DstDims(), s.result), Engine(),
                                   y->untyped_data())}},
            s, weights.untyped_data(), weight_type, /*weights_are_output=*/false);
  });
}

ffi::Error BackwardDataImpl(ffi::AnyBuffer g, ffi::AnyBuffer weights,
                            ffi::Result<ffi::Buffer<ffi::F32>> dx, int64_t thread_share) {
  ConvShape s;
  if (auto e = ReadShape(g, weights.dimensions(), false, &s); e.failure()) return e;
  memory::data_type weight_type;
  if (auto e = OperandType(weights.element_type(), &weight_type); e.failure()) return e;
  advise_huge_pages(dx->untyped_data(), dx->size_bytes());
  return Guarded([&] {
    ThreadLease lease(thread_share);
    s.threads = lease.threads();
    const Plan& plan = GetPlan(Pass::kBackwardData, s);
    Execute(plan,
            {{DNNL_ARG_DIFF_DST,
              memory(Activations(s.DstDims(), s.operand), Engine(), g.untyped_data())},
             {DNNL_ARG_DIFF_SRC, memory(Activations(s.SrcDims(), memory::data_type::f32), Engine(),
                                        dx->typed_data())}},
            s, weights.untyped_data(), weight_type, /*weights_are_output=*/false);
  });
}

ffi::Error BackwardWeightsImpl(ffi::AnyBuffer x, ffi::AnyBuffer g,
                               ffi::Result<ffi::Buffer<ffi::F32>> dweights,
                               int64_t thread_share) {
  ConvShape s;
  if (auto e = ReadShape(x, dweights->dimensions(), true, &s); e.failure()) return e;
  if (g.element_type() != x.element_type()) {
    return ffi::Error::InvalidArgument("conv_onednn: x and g must have the same dtype");
  }
  return Guarded([&] {
    ThreadLease lease(thread_share);
    s.threads = lease.threads();
    const Plan& plan = GetPlan(Pass::kBackwardWeights, s);
    Execute(plan,
            {{DNNL_ARG_SRC, memory(Activations(s.SrcDims(), s.operand), Engine(), x.untyped_data())},
             {DNNL_ARG_DIFF_DST,
              memory(Activations(s.DstDims(), s.operand), Engine(), g.untyped_data())}},
            s, dweights->typed_data(), memory::data_type::f32, /*weights_are_output=*/true);
  });
}

}  // namespace

// oneDNN's effective instruction set (a dnnl_cpu_isa_t bit mask: each level includes the bits
// of the levels it extends), for the Python side to tell whether bfloat16 runs natively.
extern "C" int OnednnConvCpuIsa() { return static_cast<int>(dnnl::get_effective_cpu_isa()); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()          // x (N, H, W, Ci)
                                  .Arg<ffi::AnyBuffer>()          // weights (KH, KW, Ci, Co)
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias (Co)
                                  .Ret<ffi::AnyBuffer>()          // y (N, H, W, Co)
                                  .Attr<int64_t>("relu")          // 1: max(y, 0)
                                  .Attr<int64_t>("thread_share"));  // 1/n of the budget

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardData, BackwardDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()          // g (N, H, W, Co)
                                  .Arg<ffi::AnyBuffer>()          // weights (KH, KW, Ci, Co)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dx (N, H, W, Ci)
                                  .Attr<int64_t>("thread_share"));  // 1/n of the budget

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardWeights, BackwardWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()          // x (N, H, W, Ci)
                                  .Arg<ffi::AnyBuffer>()          // g (N, H, W, Co)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dweights (KH, KW, Ci, Co)
                                  .Attr<int64_t>("thread_share"));  // 1/n of the budget
