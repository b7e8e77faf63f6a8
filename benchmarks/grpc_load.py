"""Closed-loop V2 gRPC load generator (``inference.GRPCInferenceService/ModelInfer``).

Keeps CONCURRENCY requests in flight on grpc.aio for DURATION seconds (after WARMUP seconds that
are not counted) and prints one JSON object: requests, errors, req/s and latency percentiles (ms).

The request is one ``ModelInferRequest`` built once with tritonclient's ``service_pb2`` (input
tensor in ``raw_input_contents``) and serialized once; every call sends those bytes as they are
(no per-call protobuf work in the client), and responses are not parsed during the load (only
their status is checked). ``--verify`` sends the request once and prints the decoded outputs.

This process must never import Shipyard's own protobuf modules: they and tritonclient both
register the ``inference`` protobuf package.

    python grpc_load.py --target 127.0.0.1:8081 --model iris --input row.npy -c 16 -d 10 -w 3
    python grpc_load.py --target 127.0.0.1:8081 --model iris --input row.npy --verify
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

METHOD = "/inference.GRPCInferenceService/ModelInfer"
DATATYPES = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NUMPY_TO_V2 = {np.dtype(v): k for k, v in DATATYPES.items()}
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def build_request(model: str, input_name: str, array: np.ndarray) -> service_pb2.ModelInferRequest:
    array = np.ascontiguousarray(array)
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name = input_name
    tensor.datatype = NUMPY_TO_V2[array.dtype]
    tensor.shape.extend(array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request


def decode_response(response: service_pb2.ModelInferResponse) -> list[dict]:
    outputs = []
    for index, output in enumerate(response.outputs):
        if index < len(response.raw_output_contents):
            raw = response.raw_output_contents[index]
            if output.datatype == "BYTES":
                data, offset = [], 0
                while offset < len(raw):
                    size = int.from_bytes(raw[offset:offset + 4], "little")
                    data.append(raw[offset + 4:offset + 4 + size].decode("utf-8", "replace"))
                    offset += 4 + size
            else:
                data = np.frombuffer(raw, dtype=DATATYPES[output.datatype]).tolist()
        else:
            values = getattr(output.contents, CONTENTS_FIELD.get(output.datatype, "fp32_contents"))
            data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        outputs.append({"name": output.name, "datatype": output.datatype, "shape": list(output.shape), "data": data})
    return outputs


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


async def run_load(args: argparse.Namespace, payload: bytes) -> dict:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.channels)]
    calls = [channel.unary_unary(METHOD) for channel in channels]  # no (de)serializers: bytes in, bytes out
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)

    latencies: list[int] = []
    errors: Counter[str] = Counter()

    async def worker(call, stop_at: int, record: bool) -> None:
        while True:
            started = time.perf_counter_ns()
            if started >= stop_at:
                return
            try:
                await call(payload, timeout=args.timeout)
            except grpc.aio.AioRpcError as exc:
                if record:
                    errors[exc.code().name] += 1
                continue
            if record:
                latencies.append(time.perf_counter_ns() - started)

    async def phase(seconds: float, record: bool) -> float:
        began = time.perf_counter_ns()
        stop_at = began + int(seconds * 1e9)
        await asyncio.gather(*(worker(calls[i % len(calls)], stop_at, record) for i in range(args.concurrency)))
        return (time.perf_counter_ns() - began) / 1e9

    if args.warmup > 0:
        await phase(args.warmup, False)
    cpu_before = time.process_time()  # every thread of this process (grpc's I/O threads too)
    elapsed = await phase(args.duration, True)
    cpu = time.process_time() - cpu_before
    for channel in channels:
        await channel.close()

    latencies.sort()
    ms = lambda ns: round(ns / 1e6, 4)  # noqa: E731
    return {
        "requests": len(latencies),
        "errors": dict(errors),
        "duration_s": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {
            "min": ms(latencies[0]) if latencies else None,
            "mean": ms(sum(latencies) / len(latencies)) if latencies else None,
            "p50": ms(percentile(latencies, 50)),
            "p90": ms(percentile(latencies, 90)),
            "p99": ms(percentile(latencies, 99)),
            "p999": ms(percentile(latencies, 99.9)),
            "max": ms(latencies[-1]) if latencies else None,
        },
        "client_cpu_s": round(cpu, 3),
        "concurrency": args.concurrency,
        "channels": args.channels,
    }


async def verify(args: argparse.Namespace, request: service_pb2.ModelInferRequest) -> dict:
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        call = channel.unary_unary(
            METHOD,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        response = await call(request, timeout=args.timeout)
    return {"model_name": response.model_name, "outputs": decode_response(response)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port of the V2 gRPC service")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help=".npy file with the input tensor (its dtype and shape are sent)")
    parser.add_argument("--input-name", default="input-0")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("-w", "--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--channels", type=int, default=1, help="HTTP/2 connections to spread the requests over")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, seconds")
    parser.add_argument("--verify", action="store_true", help="send one request and print its decoded outputs")
    args = parser.parse_args()

    request = build_request(args.model, args.input_name, np.load(args.input))
    try:
        if args.verify:
            result = asyncio.run(verify(args, request))
        else:
            result = asyncio.run(run_load(args, request.SerializeToString()))
    except grpc.aio.AioRpcError as exc:
        print(json.dumps({"error": f"{exc.code().name}: {exc.details()}"}))
        return 1
    except (asyncio.TimeoutError, OSError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
