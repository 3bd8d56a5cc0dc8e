#!/usr/bin/env python3
"""Calls ferrio's CRI services with Python grpcio, a client built on grpc-core, as its users do.

grpc-core derives the HTTP/2 :authority from the target (for unix:///run/x.sock it sends the
percent-encoded path), unlike Go clients that force "localhost". No stubs are generated: requests and
responses travel as raw protobuf bytes through grpcio's generic calls.

Usage: grpcio-client.py SOCKET [METHOD HEX_REQUEST [TIMEOUT_SECONDS]]...
Prints one JSON line per call: {"method", "code", "details", "responses": [hex, ...]}.
A method whose name starts with "Stream" is called as a server stream.
"""
import json
import sys

import grpc


IMAGE_SERVICE = ("ListImages", "StreamImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo")


def call(channel, method, request, timeout):
    identity = lambda b: b
    service = "ImageService" if method in IMAGE_SERVICE else "RuntimeService"
    path = "/runtime.v1.%s/%s" % (service, method)
    out = {"method": method, "code": "OK", "details": "", "responses": []}
    try:
        if method.startswith("Stream"):
            rpc = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)
            for msg in rpc(request, timeout=timeout):
                out["responses"].append(msg.hex())
        else:
            rpc = channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)
            out["responses"].append(rpc(request, timeout=timeout).hex())
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details() or ""
    return out


def main(argv):
    socket = argv[1]
    args = argv[2:]
    with grpc.insecure_channel("unix://" + socket) as channel:
        while args:
            method, request = args[0], bytes.fromhex(args[1])
            timeout = None
            args = args[2:]
            if args and args[0].replace(".", "", 1).isdigit():
                timeout = float(args[0])
                args = args[1:]
            print(json.dumps(call(channel, method, request, timeout)), flush=True)


if __name__ == "__main__":
    main(sys.argv)
