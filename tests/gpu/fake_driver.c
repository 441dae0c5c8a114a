/* A stand-in for the NVIDIA driver's libcuda.so.1 with none of its functions (module.sh
 * installs it under that name): enough for pesc to open its CUDA module, which then finds,
 * through the CUDA runtime, that no usable driver is there. */
int pesc_fake_driver;
