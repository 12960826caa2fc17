"""The API's OpenAPI 3.1 document (``GET /api/v1/openapi.json``): what scripts and the tests'
schema-driven requests rely on. Kept by hand beside the routes (`tandem.engine.api.app`); the
tests check that every route is in it and every answer matches it."""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/responses/Error"}
NODE = {
    "name": "node",
    "in": "query",
    "required": False,
    "description": "ask this node instead (the request is forwarded to it)",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
}
MODULE = {
    "name": "module",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"},
}
COMMAND_TEXT = {
    "start": "start a stopped module on the node (it serves or follows as the peer decides)",
    "stop": "stop the module on the node (an up-to-date peer takes over)",
    "restart": "stop then start the module on the node",
    "swap": "hand the serving role to the peer; asked of either node, the serving node acts",
    "prim": "make the node serve the module (refused if its copy may be stale, unless force)",
    "second": "step down: the up-to-date peer serves, this node follows",
}


def _json(schema: dict[str, Any], text: str = "OK") -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): ERROR for code in codes}


STATE = {
    "type": "object",
    "required": ["version", "state_dir", "modules"],
    "properties": {
        "version": {"type": "integer", "const": 1},
        "state_dir": {"type": "string"},
        "modules": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["failover", "streams"],
                "properties": {
                    "failover": {
                        "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Failover"}]
                    },
                    "streams": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
    },
}
FAILOVER = {
    "type": "object",
    "required": ["running"],
    "properties": {
        "running": {"type": "boolean"},
        "state": {"enum": ["STOP", "WAIT", "ALONE", "PRIM", "SECOND"]},
        "reason": {"type": ["string", "null"]},
        "node": {"type": "string"},
        "for_s": {"type": "number"},
        "serving": {"type": "boolean"},
        "vip": {"type": ["string", "null"]},
        "checkers": {"type": "array", "items": {"type": "string"}},
        "history": {"type": "array", "items": {"type": "object"}},
        "peer": {"type": "object"},
    },
}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/api/v1/health": {
            "get": {
                "summary": "is the node's API up (no credentials needed)",
                "security": [],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status", "node"],
                            "properties": {"status": {"const": "ok"}, "node": {"type": "string"}},
                        }
                    )
                },
            }
        },
        "/api/v1/session": {
            "post": {
                "summary": "log in: sets the session cookie, answers the CSRF token",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["user", "password"],
                                "properties": {
                                    "user": {"type": "string", "minLength": 1},
                                    "password": {"type": "string", "minLength": 1},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Session"}),
                    **_errors(400, 401, 413, 429),
                },
            },
            "get": {
                "summary": "who is logged in, with the CSRF token commands must send",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Session"}),
                    **_errors(401),
                },
            },
            "delete": {
                "summary": "log out",
                "responses": {"200": _json({"type": "object"}), **_errors(401, 403)},
            },
        },
        "/api/v1/state": {
            "get": {
                "summary": "this node's modules: the document `tandem state --json` prints",
                "parameters": [NODE],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/State"}),
                    **_errors(400, 401, 404, 502),
                },
            }
        },
        "/api/v1/cluster": {
            "get": {
                "summary": "every node's state document, each asked at once",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["node", "nodes"],
                            "properties": {
                                "node": {"type": "string"},
                                "nodes": {
                                    "type": "object",
                                    "additionalProperties": {"type": "object"},
                                },
                            },
                        }
                    ),
                    **_errors(401),
                },
            }
        },
        "/api/v1/modules/{module}/log": {
            "get": {
                "summary": "a page of the module log or the application log; follow with after",
                "parameters": [
                    MODULE,
                    NODE,
                    {"name": "kind", "in": "query", "schema": {"enum": ["module", "app"]}},
                    {
                        "name": "lines",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10000},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "the byte offset a previous page answered as next",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "with after: seconds to wait for more",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 25},
                    },
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/LogPage"}),
                    **_errors(400, 401, 404, 502),
                },
            }
        },
        "/api/v1/snapshot": {
            "get": {
                "summary": "a support snapshot (.zip) of the node; admin only",
                "parameters": [NODE],
                "responses": {
                    "200": {"description": "the zip", "content": {"application/zip": {}}},
                    **_errors(400, 401, 403, 404, 502),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {"200": _json({"type": "object"}), **_errors(401)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of this node",
                "responses": {
                    "200": {"description": "the text format", "content": {"text/plain": {}}},
                    **_errors(401),
                },
            }
        },
    }
    for name, text in COMMAND_TEXT.items():
        paths[f"/api/v1/modules/{{module}}/{name}"] = {
            "post": {
                "summary": text,
                "description": "admin only; refused as the CLI refuses (409, with the reason)",
                "parameters": [MODULE],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "node": {"type": "string", "description": "the node to act"},
                                    "force": {"type": "boolean"},
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/CommandDone"}),
                    **_errors(400, 401, 403, 404, 409, 413, 502),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tandem node API", "version": "1"},
        "paths": paths,
        "security": [{"session": []}, {"token": []}],
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "tandem_session"},
                "token": {"type": "http", "scheme": "bearer"},
            },
            "responses": {
                "Error": _json(
                    {
                        "type": "object",
                        "required": ["error"],
                        "properties": {"error": {"type": "string"}},
                    },
                    "refused, with the reason in one line",
                )
            },
            "schemas": {
                "State": STATE,
                "Failover": FAILOVER,
                "Session": {
                    "type": "object",
                    "required": ["user", "role", "node"],
                    "properties": {
                        "user": {"type": "string"},
                        "role": {"enum": ["admin", "read-only"]},
                        "csrf": {"type": ["string", "null"]},
                        "node": {"type": "string"},
                    },
                },
                "LogPage": {
                    "type": "object",
                    "required": ["lines", "next", "rotated", "node"],
                    "properties": {
                        "lines": {"type": "array", "items": {"type": "string"}},
                        "next": {"type": "integer"},
                        "rotated": {"type": "boolean"},
                        "node": {"type": "string"},
                    },
                },
                "CommandDone": {
                    "type": "object",
                    "required": ["node", "module", "command", "failover"],
                    "properties": {
                        "node": {"type": "string"},
                        "module": {"type": "string"},
                        "command": {"type": "string"},
                        "failover": {"type": "object"},
                    },
                },
            },
        },
    }
