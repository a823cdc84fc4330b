"""The load: request data, the asyncio gRPC load loop, its window statistics, and the policy that measures a
trial with it."""
