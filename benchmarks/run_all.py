"""Run every workload, one after another, in this process: python benchmarks/run_all.py"""
import cache_second_process
import compile_memory
import w1_tiny
import w2_lennard_jones
import w3_elementwise
import w4_mlp
import w5_compile_scaling
import w6_training
import w7_selection
import w8_transforms
import w9_shooting
import w10_dask
import w11_rosenbrock

if __name__ == "__main__":
    for module in (w1_tiny, w2_lennard_jones, w3_elementwise, w4_mlp, w5_compile_scaling,
                   w6_training, w7_selection, w8_transforms, w9_shooting, w10_dask,
                   w11_rosenbrock, cache_second_process, compile_memory):
        module.main()
