// A CUDA device guard that only counts device indices (c10's FakeGuardImpl), registered in a CPU build of torch so
// that ops which open a device guard (indexing, in-place writes, nn.Linear(device="cuda")) accept FakeTensors on
// "cuda". No CUDA code runs: FakeTensorMode computes shapes, dtypes and devices only. Used by tests/fake_cuda.py.
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>

C10_REGISTER_GUARD_IMPL(CUDA, c10::impl::FakeGuardImpl<c10::DeviceType::CUDA>);

// torch.cuda.set_device(i) on the fake machine: the guard's current device, which a bare "cuda" resolves to in C++.
extern "C" void llama_lit_fake_cuda_set_device(int index) {
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(c10::Device(c10::DeviceType::CUDA, index));
}

extern "C" int llama_lit_fake_cuda_current_device() {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getDevice().index();
}
