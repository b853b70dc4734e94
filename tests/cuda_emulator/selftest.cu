// Kernels that test the emulator itself (test_emulator.py): thread coordinates, shuffles,
// __syncthreads through shared memory, reduce.cuh's block_sum, and a divergent barrier.
#include "../../normref/kernels/cuda/reduce.cuh"

// Six ints per thread: threadIdx.xyz and blockIdx.xyz, at the thread's linear global index.
__global__ void coordinates(int* out) {
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int* mine = out + 6 * (static_cast<long long>(b) * blockDim.x * blockDim.y * blockDim.z + t);
    mine[0] = threadIdx.x;
    mine[1] = threadIdx.y;
    mine[2] = threadIdx.z;
    mine[3] = blockIdx.x;
    mine[4] = blockIdx.y;
    mine[5] = blockIdx.z;
}

// Every shuffle flavour on a 1-D grid; out has 4 rows of the grid's size.
__global__ void shuffles(const double* in, double* out, int lane_mask, int delta) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int size = gridDim.x * blockDim.x;
    const double v = in[i];
    out[i] = __shfl_xor_sync(0xffffffffu, v, lane_mask);
    out[size + i] = __shfl_down_sync(0xffffffffu, v, delta);
    out[2 * size + i] = __shfl_up_sync(0xffffffffu, v, delta);
    out[3 * size + i] = __shfl_sync(0xffffffffu, v, (threadIdx.x * 7) % 32);
}

// Reverses each block's slice through shared memory: wrong without a real barrier.
__global__ void reverse_blocks(const float* in, float* out) {
    __shared__ float slice[1024];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    slice[threadIdx.x] = in[i];
    __syncthreads();
    out[i] = slice[blockDim.x - 1 - threadIdx.x];
}

// Every thread writes the two block totals it got from block_sum: sum(in) and sum(2 in).
template <typename Acc>
__global__ void block_sums(const Acc* in, Acc* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    Acc v[2] = {in[i], 2 * in[i]};
    normref::block_sum(v);
    out[2 * i] = v[0];
    out[2 * i + 1] = v[1];
}

// A bug the emulator must report rather than hang on: only thread 0 reaches the barrier.
__global__ void divergent_sync(int* out) {
    if (threadIdx.x == 0) __syncthreads();
    out[threadIdx.x] = 1;
}
