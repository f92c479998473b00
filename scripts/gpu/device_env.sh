# Source this at the start of every device command (from the repo root):  . scripts/gpu/device_env.sh
# Unpacks whatever parts this call carried into /tmp (a warm machine keeps /tmp between calls), then points
# PYTHONPATH at onnxruntime-gpu (/tmp/ortgpu), TensorRT-RTX (/tmp/site) and this checkout.
[ -f .gpu-payload/unpack.sh ] && bash .gpu-payload/unpack.sh
mkdir -p /tmp/rtxparts /tmp/site
for d in .gpu-carry/rtx-a .gpu-carry/rtx-b; do [ -d "$d" ] && cp -n "$d"/* /tmp/rtxparts/; done
if [ -f /tmp/rtxparts/rtx.so.xz.part0 ] && [ -f /tmp/rtxparts/rtx.so.xz.part1 ] && [ ! -s /tmp/site/tensorrt_rtx_libs/libtensorrt_rtx.so.1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/rtxparts/*.whl \
    && mkdir -p /tmp/site/tensorrt_rtx_libs \
    && cp /tmp/rtxparts/libs_init.py /tmp/site/tensorrt_rtx_libs/__init__.py \
    && xz -dc /tmp/rtxparts/parser.so.xz > /tmp/site/tensorrt_rtx_libs/libtensorrt_onnxparser_rtx.so.1 \
    && cat /tmp/rtxparts/rtx.so.xz.part0 /tmp/rtxparts/rtx.so.xz.part1 | xz -dc > /tmp/site/tensorrt_rtx_libs/libtensorrt_rtx.so.1 \
    && echo "TensorRT-RTX ready in /tmp/site"
fi
# .gpu-carry/whl (server + OCR post-processing), whl-serve (uvloop, httptools), whl-rapid (rapidocr 3.10 + deps): each
# folder a call carried is installed; what an earlier call installed stays in /tmp/site on a warm machine.
for w in .gpu-carry/whl .gpu-carry/whl-*; do
  [ -d "$w" ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$w"/*.whl 2>&1 \
    | grep -v -i "warning" || true
done
# Carried data is copied to /tmp/gpu-carry so a later call on the same warm machine can use it without carrying it.
mkdir -p /tmp/gpu-carry
for d in onnx pages dict det; do [ -d ".gpu-carry/$d" ] && cp -rn ".gpu-carry/$d" /tmp/gpu-carry/; done
[ -d /tmp/gpu-carry/onnx ] && export PPDEPLOY_TEST_ONNX_DIR=/tmp/gpu-carry/onnx
[ -d /tmp/gpu-carry/pages ] && export PPDEPLOY_TEST_PAGES=/tmp/gpu-carry/pages
[ -f /tmp/gpu-carry/dict/ppocr_keys_v1.txt ] && export E2E_DICT=/tmp/gpu-carry/dict/ppocr_keys_v1.txt
# ONNX conversion entries for the carried models, made here: the device has no onnxslim, and needs none on a hit
[ -d .gpu-carry/cache ] && mkdir -p /tmp/ppdeploy-cache && cp -rn .gpu-carry/cache/. /tmp/ppdeploy-cache/
export PYTHONPATH=/tmp/ortgpu:/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 PPDEPLOY_CACHE=/tmp/ppdeploy-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
