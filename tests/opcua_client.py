#!/usr/bin/env python3
"""An OPC UA client (python-asyncua) against a running station, over Basic256Sha256
sign-and-encrypt with its own certificate: browse the VisionSystem, read its state and the
last result, list the recipes, select one and wait until it is the active one. Prints one JSON
object. Also tries an anonymous session and an unsecured connection, which the station must
refuse unless its profile allows anonymous sessions.

    python3 tests/opcua_client.py --make-cert DIR       # the client's key and certificate
    (copy DIR/client.der into the station's pki_dir/trusted/, or let the first try land it
    in pki_dir/rejected/ and move it to trusted/)
    python3 tests/opcua_client.py --cert DIR --url opc.tcp://127.0.0.1:4840/ \
        --station host-sim-plc --user operator --password ferroscope [--select NAME]
"""
import argparse, asyncio, json, socket, sys, time
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

APP_URI = "urn:ferroscope:opcua-test-client"


async def make_cert(d):
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID
    d.mkdir(parents=True, exist_ok=True)
    await setup_self_signed_certificate(d / "client.pem", d / "client.der", APP_URI, socket.gethostname(),
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "ferroscope test client"})


async def secure_client(a, user=True):
    c = Client(a.url, timeout=10)
    c.application_uri = APP_URI
    await c.set_security(SecurityPolicyBasic256Sha256, str(Path(a.cert) / "client.der"),
                         str(Path(a.cert) / "client.pem"), mode=ua.MessageSecurityMode.SignAndEncrypt)
    if user:
        c.set_user(a.user)
        c.set_password(a.password)
    return c


async def session(a, out):
    c = await secure_client(a)
    async with c:
        ns = await c.get_namespace_index("urn:ferroscope:%s" % a.station)
        q = lambda *names: ["%d:%s" % (ns, n) for n in names]
        vs = await c.nodes.objects.get_child(q("VisionSystem"))
        out["browse"] = sorted([(await n.read_browse_name()).Name for n in await vs.get_children()])
        state = await vs.get_child(q("VisionStateMachine", "CurrentState"))
        out["state"] = await state.read_value()
        lr = await vs.get_child(q("ResultManagement", "LastResult"))
        out["last_result_fields"] = sorted([(await n.read_browse_name()).Name for n in await lr.get_children()])
        # Several readings of the last result, each its fields in one request (its ID moves on
        # between readings): every reading must be one item's.
        names = ["InspectionId", "ResultId", "IsPass", "ResultCode", "ClassName", "Score", "Recipe", "CreationTime"]
        fields = [await lr.get_child(q(n)) for n in names]
        results = []
        for _ in range(a.results):
            r = dict(zip(names, await c.read_values(fields)))
            r["CreationTime"] = r["CreationTime"].isoformat()
            results.append(r)
            await asyncio.sleep(0.25)
        out["results"] = results
        rm = await vs.get_child(q("RecipeManagement"))
        out["recipes"] = await (await rm.get_child(q("Recipes"))).read_value()
        active = await rm.get_child(q("ActiveRecipe"))
        out["active_before"] = await active.read_value()
        try:
            await rm.call_method(q("SelectRecipe")[0], "no-such-recipe")
            out["unknown_recipe"] = "accepted"
        except ua.UaStatusCodeError as e:
            out["unknown_recipe"] = type(e).__name__
        if a.select:
            out["select_answer"] = await rm.call_method(q("SelectRecipe")[0], a.select)
            t0 = time.monotonic()
            while await active.read_value() != a.select and time.monotonic() - t0 < 30:
                await asyncio.sleep(0.05)
            out["active_after"] = await active.read_value()
            out["switch_s"] = round(time.monotonic() - t0, 3)
            await asyncio.sleep(0.5)
            out["last_recipe_after"] = await (await lr.get_child(q("Recipe"))).read_value()
            out["last_id_after"] = await (await lr.get_child(q("InspectionId"))).read_value()


async def refused(what, make, out):
    try:
        c = await make()
        async with c:
            await c.nodes.objects.get_children()
        out[what] = "accepted"
    except Exception as e:  # the station refuses: the error's kind is what is reported
        out[what] = type(e).__name__


async def plain():
    return Client(ARGS.url, timeout=10)


async def anonymous_secure():
    return await secure_client(ARGS, user=False)


async def wrong_password():
    c = await secure_client(ARGS)
    c.set_password(ARGS.password + "x")
    return c


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-cert")
    ap.add_argument("--cert")
    ap.add_argument("--url")
    ap.add_argument("--station")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--select")
    ap.add_argument("--results", type=int, default=5)
    a = ARGS = ap.parse_args()
    if a.make_cert:
        asyncio.run(make_cert(Path(a.make_cert)))
        return
    out = {}
    asyncio.run(session(a, out))
    asyncio.run(refused("anonymous", anonymous_secure, out))
    asyncio.run(refused("unsecured", plain, out))
    asyncio.run(refused("wrong_password", wrong_password, out))
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
