//! Host-side bindings for the Spin interfaces the components import (WIT vendored from spin-sdk 7).

wasmtime::component::bindgen!({
    path: "wit",
    world: "gateway:host/spin-imports",
    with: {
        "spin:redis/redis.connection": crate::outbound_redis::RedisConnection,
    },
});
