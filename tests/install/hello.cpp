// SPDX-License-Identifier: MIT
// Built outside the tree against the installed library (tests/install/install_test.sh): the smallest
// complete program — a model, an AsyncRuntime on the sim backend, a coroutine, a synchronous wait.
#include <cstdio>

#include <vnpu/vnpu.h>

namespace {
vnpu::Task<float> twice(vnpu::AsyncRuntime& rt) {
  // Named vectors: GCC 12 cannot keep initializer_list temporaries alive across co_await.
  std::vector<int64_t> shape{2, 2};
  std::vector<float> data{1, 2, 3, 4};
  vnpu::Tensor x(std::move(shape), std::move(data));
  auto y = co_await rt.async_run(std::move(x));
  co_return y[0].data()[3];
}
}  // namespace

int main() {
  try {
    vnpu::Tensor w({2, 2}, {2, 0, 0, 2});  // y = 2x
    vnpu::RuntimeOptions opt;
    opt.backend = "sim";
    vnpu::AsyncRuntime rt(vnpu::MatmulModel(2, std::move(w)), opt);
    const float v = vnpu::sync_wait(twice(rt));
    std::printf("hello: y[1,1] = %g on %s\n", v, rt.device_info().name.c_str());
    return v == 8.0f ? 0 : 1;
  } catch (const vnpu::Error& e) {
    std::fprintf(stderr, "hello: %s\n", e.what());
    return 1;
  }
}
