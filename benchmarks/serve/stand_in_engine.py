"""A stand-in for a vLLM server with no model: it answers the endpoints the routing front uses (health, models,
loading and unloading LoRA adapters, streamed completions of a fixed text) so that the front's own start time
and memory can be measured where vLLM is not installed. It generates nothing real; answers are "ok".

Usage: python benchmarks/serve/stand_in_engine.py PORT
"""

from __future__ import annotations

import json
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

app = FastAPI()
adapters: set[str] = set()


@app.get("/health")
async def health():
    return {}


@app.get("/v1/models")
async def models():
    return {"object": "list", "data": [{"id": name, "object": "model"} for name in ["slm-base", *sorted(adapters)]]}


@app.post("/v1/load_lora_adapter")
async def load(request: Request):
    body = await request.json()
    adapters.add(body["lora_name"])
    return JSONResponse("ok")


@app.post("/v1/unload_lora_adapter")
async def unload(request: Request):
    body = await request.json()
    adapters.discard(body["lora_name"])
    return JSONResponse("ok")


@app.post("/v1/completions")
async def completions(request: Request):
    body = await request.json()

    def chunks():
        yield "data: " + json.dumps({"choices": [{"text": "ok", "finish_reason": "stop"}]}) + "\n\n"
        yield "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                                                              "completion_tokens": 1}}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
