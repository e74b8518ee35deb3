"""A storefront in another language: cartdb's pricing through Python grpcio stubs generated from
proto/*.proto at run time.

    python pricing_check.py PROTO_DIR PRICING_TOML SECRET HOST:PORT [HOST:PORT ...]

Sets the pricing rules at the first node, fills a cart with two currencies and two coupons (one
expired) at the second, and reads it priced for DE (20% VAT included, free shipping from 50.00
EUR) at the last, once every node has the rules. Exits 1, naming the difference, when the summary
is not the one the worked examples predict (crdt/src/pricing.rs); prints "ok" otherwise.
"""
import importlib
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

# 2026-12-04T00:00:00Z: TENOFF applies, SUMMER has expired.
NOW_MS = 1_796_342_400_000
CART = "user:python"


def generate(proto_dir):
    out = tempfile.mkdtemp(prefix="cartdb-py-")
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
            os.path.join(proto_dir, "cart.proto"), os.path.join(proto_dir, "admin.proto")]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return (importlib.import_module("cart_pb2"), importlib.import_module("cart_pb2_grpc"),
            importlib.import_module("admin_pb2"), importlib.import_module("admin_pb2_grpc"))


def expect(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")


def main():
    proto_dir, rules_file, secret, *nodes = sys.argv[1:]
    cart_pb2, cart_grpc, admin_pb2, admin_grpc = generate(proto_dir)
    first, middle, last = nodes[0], nodes[len(nodes) // 2], nodes[-1]

    admin = admin_grpc.AdminServiceStub(grpc.insecure_channel(first))
    with open(rules_file) as f:
        reply = admin.SetPricing(admin_pb2.SetPricingRequest(document=f.read()),
                                 metadata=[("x-cartdb-secret", secret)], timeout=10)
    version = reply.version
    if version < 1:
        sys.exit(f"SetPricing answered version {version}")

    # The rules spread by heartbeats: wait until every node holds them (a node without them yet
    # takes any coupon code, as before pricing existed).
    deadline = time.monotonic() + 15
    for node in nodes:
        stub = admin_grpc.AdminServiceStub(grpc.insecure_channel(node))
        while stub.GetPricing(admin_pb2.GetPricingRequest(), timeout=10).version < version:
            if time.monotonic() > deadline:
                sys.exit(f"{node} did not get pricing rules version {version} within 15 s")
            time.sleep(0.1)

    carts = cart_grpc.CartServiceStub(grpc.insecure_channel(middle))
    for product, qty, price, currency in [("mug", 1, 1000, "EUR"), ("tee", 2, 1500, "USD")]:
        carts.AddItem(cart_pb2.AddItemRequest(
            cart_id=CART, product_id=product, quantity=qty,
            snapshot=cart_pb2.ItemSnapshot(name=product, unit_price_minor=price, currency=currency)),
            timeout=10)
    try:
        carts.ApplyCoupon(cart_pb2.ApplyCouponRequest(cart_id=CART, code="BOGUS"), timeout=10)
        sys.exit("ApplyCoupon of an unknown code was accepted")
    except grpc.RpcError as e:
        expect("unknown coupon status", e.code(), grpc.StatusCode.NOT_FOUND)
    for code in ["TENOFF", "SUMMER"]:
        carts.ApplyCoupon(cart_pb2.ApplyCouponRequest(cart_id=CART, code=code), timeout=10)

    reader = cart_grpc.CartServiceStub(grpc.insecure_channel(last))
    context = cart_pb2.PricingContext(region="DE", now_ms=NOW_MS)
    deadline = time.monotonic() + 15
    while True:
        try:
            cart = reader.GetCart(cart_pb2.GetCartRequest(cart_id=CART, pricing=context), timeout=10).cart
            if len(cart.coupons) == 2:
                break
        except grpc.RpcError as e:
            # A read quorum that misses the last write is retried (R + W > N makes it rare).
            print("retrying GetCart:", e.code(), file=sys.stderr)
        if time.monotonic() > deadline:
            sys.exit(f"{last} did not show both coupons within 15 s")
        time.sleep(0.2)
    expect("rules version", cart.pricing.rules_version, version)

    try:
        reader.GetCart(cart_pb2.GetCartRequest(
            cart_id=CART, pricing=cart_pb2.PricingContext(region="FR")), timeout=10)
        sys.exit("an unknown region was accepted")
    except grpc.RpcError as e:
        expect("unknown region status", e.code(), grpc.StatusCode.INVALID_ARGUMENT)
        if "pricing.region" not in e.details():
            sys.exit(f"the refusal does not name the field: {e.details()}")

    p = cart.pricing
    expect("region", p.region, "DE")
    rows = [(c.currency, c.subtotal_minor, [(d.code, d.amount_minor) for d in c.discounts],
             c.discount_total_minor, c.tax_minor, c.tax_included_minor, c.shipping_minor, c.total_minor)
            for c in p.currencies]
    # EUR: 10.00 − 1.00 = 9.00, VAT in it 1.50, shipping 4.95 → 13.95.
    # USD: 30.00 − 3.00 = 27.00, VAT 4.50, DE has no USD shipping rate → 27.00.
    expect("summary", rows, [
        ("EUR", 1000, [("TENOFF", 100)], 100, 0, 150, 495, 1395),
        ("USD", 3000, [("TENOFF", 300)], 300, 0, 450, 0, 2700),
    ])
    for c in p.currencies:
        why = [(n.code, n.reason.split(" ")[0]) for n in c.not_applied]
        expect(f"{c.currency} coupons not applied", why, [("SUMMER", "expired")])
        expect(f"{c.currency} total law", c.total_minor,
               c.subtotal_minor - c.discount_total_minor + c.tax_minor + c.shipping_minor)
    print("ok", rows)


if __name__ == "__main__":
    main()
