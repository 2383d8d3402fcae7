"""QONNX export (:mod:`.lower`) and the hls4ml build of it (:mod:`.hls`, the ``[fpga]`` extra)."""
