"""The human-readable output of ``fedbiot-plan``: one plan's report and the ``--compare`` table.

:func:`render` writes a :func:`~fedbiot_pl.planning.figures.plan` dict as a report, :func:`render_comparison`
a list of them as a markdown table with footers on the FLOPs, KD, split and hierarchical rows; a plan with a
``hier`` block (HierFedLoRA) is rendered by :func:`render_hier`; :func:`size` and :func:`flops` format bytes
and FLOPs.
"""

from __future__ import annotations

from typing import Any

from fedbiot_pl.planning.traffic import KD_FORMULA, LORA_BYTES, split_numbers


def size(num_bytes: int) -> str:
    """``num_bytes`` with thousands separators and in binary units."""
    if num_bytes < 1024:
        return f"{num_bytes:,} B"
    scaled, unit = num_bytes / 1024, "TiB"
    for candidate in ("KiB", "MiB", "GiB"):
        if scaled < 1024:
            unit = candidate
            break
        scaled /= 1024
    return f"{num_bytes:,} B ({scaled:.1f} {unit})"


def flops(value: int) -> str:
    """FLOPs with an SI prefix: ``13.47 GFLOP``."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}FLOP"
    return f"{value} FLOP"


def _kd_moves(kd: dict[str, Any]) -> str:
    """One line on what a KD algorithm's payload holds."""
    index = "uint16" if kd["index_bytes"] == 2 else "int32"
    return (f"top-k logits on P={kd['public_examples']:,} public examples x T={kd['seq_len']:,} tokens, "
            f"k={kd['top_k']:,} (float16 values + {index} indices): {KD_FORMULA}, an upper bound")


def _layers(positions: list[int]) -> str:
    """Decoder layer indices as runs: ``0, 1, 2, 31`` -> ``0-2, 31``."""
    runs: list[list[int]] = []
    for index in positions:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) or "none"


def _split_header(p: dict[str, Any]) -> list[str]:
    """A split plan's cut, sides and the traffic's terms (the report's top lines)."""
    s = p["split"]
    top = s["u_shaped"]  # the client holds the top layers, the head, the labels and the loss
    shape = f"U-shaped, client top layers m={s['client_top_layers']}" if top else "vanilla"
    per = s["per_micro_batch"]
    return [
        (f"split learning ({shape}): cut after k={s['cut_layer']} layers, server mode {s['server_mode']}, "
         f"LoRA r={s['lora_r']} alpha={s['lora_alpha']} on {', '.join(s['lora_targets'])} on every layer"),
        f"  client layers: {_layers(s['client_layers'])} (+ embeddings{', final norm, LM head and loss' * top})",
        f"  server layers: {_layers(s['server_layers'])}{' (+ final norm, LM head and loss)' * (not top)}",
        (f"  wire: M={s['micro_batches']:,} micro-batches of B={s['batch_size']:,} x T={s['seq_len']:,} tokens a "
         f"round, d={s['hidden_size']:,}, activations {s['activation_dtype']} (b={s['activation_bytes']})"),
        "  per micro-batch up: " + ", ".join(f"{k} {v:,} B" for k, v in per["upload"].items()),
        "  per micro-batch down: " + ", ".join(f"{k} {v:,} B" for k, v in per["download"].items()),
        f"  per round: {split_numbers(s)}",
    ]


def _moving(p: dict[str, Any]) -> tuple[str, list[str]]:
    """The trainable line and the traffic lines of :func:`render`, by the algorithm's family."""
    one, rnd, kd, split = p["per_client_per_round"], p["per_round"], p.get("kd"), p["split"]
    clients = f"{rnd['clients']} client{'s' if rnd['clients'] != 1 else ''}"
    if kd is not None:
        server = p["trainable"]["server"]
        trainable = (f"trainable: client (its own LoRA, kept across rounds) {p['trainable']['client']:,}, server "
                     + (f"(its LoRA, distilled) {server:,}" if server else "none (averages the clients' top-k logits)"))
        return trainable, [
            f"KD ({kd['client_model']} client model): no LoRA travels; each way {_kd_moves(kd)}",
            "per client per round",
            f"  download {size(one['download_bytes'])}",
            f"  upload   {size(one['upload_bytes'])}",
            f"  (dense float16 logits of the same tokens: {size(kd['dense_fp16_bytes'])})",
            f"per round ({clients})",
            f"  download {size(rnd['download_bytes'])}",
            f"  upload   {size(rnd['upload_bytes'])}",
        ]
    if "cut_layer" in split:
        trainable = (f"trainable: client (LoRA of its layers) {p['trainable']['client']:,}, "
                     f"server (LoRA of its layers) {p['trainable']['server']:,}")
        label = "activations and gradients at the cut, the client LoRA as float32"
    else:
        trainable = (f"trainable: client (adapter LoRA) {p['trainable']['client']:,}, "
                     f"server (emulator LoRA) {p['trainable']['server']:,}")
        label = "LoRA as float32"
    return trainable, [
        f"per client per round ({label})",
        f"  download {one['download_params']:>14,} params  {size(one['download_bytes'])}",
        f"  upload   {one['upload_params']:>14,} params  {size(one['upload_bytes'])}",
        f"per round ({clients})",
        f"  download {rnd['download_params']:>14,} params  {size(rnd['download_bytes'])}",
        f"  upload   {rnd['upload_params']:>14,} params  {size(rnd['upload_bytes'])}",
    ]


def _compute_lines(p: dict[str, Any]) -> list[str]:
    """The FLOPs lines of :func:`render`: the client's step and, split, the server's per client token."""
    c = p["client_compute"]
    lines = [(f"client FLOPs per token of a training step (T={c['seq_len']:,}): {flops(c['total'])} "
              f"(forward {flops(c['forward'])}, backward {flops(c['backward'])}; {c['forward_layers']} layers "
              f"forward, {c['backward_layers']} backward, LM head {'included' if c['head'] else 'on the server'})")]
    if "public_forward" in c:
        lines.append(f"  plus {c['public_tokens_per_round']:,} public tokens a round forward only: "
                     f"{flops(c['public_forward'])} each")
    server = p.get("server_compute_per_client")
    if server is not None:
        lines.append(f"server FLOPs per token of each client's tokens: {flops(server['total'])} (forward "
                     f"{flops(server['forward'])}, backward {flops(server['backward'])} down to the cut)")
    return lines


def _unit(num_bytes: float) -> str:
    """Bytes in the largest binary unit below them, one decimal: ``2.0 MiB``, ``7.0 KiB``, ``512 B``."""
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes:,.0f} B"


def _memory(num_bytes: float) -> str:
    """A memory size with two decimals: ``15.35 GiB`` (MiB below 1 GiB)."""
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.2f} MiB"


def _joined(values: list[Any]) -> str:
    return ",".join(str(v) for v in values)


def _group_table(h: dict[str, Any]) -> list[str]:
    """One line per group: members, examples and KL (a run's), depth, rounds, peak memory, times (a fleet's)."""
    groups = h["groups"]
    header = ["group", "devices", "members"]
    divergence, timed = "kl" in groups[0], "seconds" in groups[0]
    if divergence:
        header += ["examples", "KL", "TV"]
    if timed:
        header += ["slowest tier", "smallest memory"]
    header += ["depth", "intra rounds", "est. peak"]
    if timed:
        header += ["u_g s", "T_g s"]
    rows = []
    for g in groups:
        members = _layers(g["members"]).replace(" ", "")
        row = [str(g["group"]), str(g["size"]), members]
        if divergence:
            row += [f"{g['examples']:,}", f"{g['kl']:.4f}", f"{g['tv']:.4f}"]
        if timed:
            row += [g["slowest_tier"] or "-", _memory(g["min_memory_bytes"])]
        row += [str(g["depth"]), str(g["intra_rounds"]),
                _memory(g["peak_memory_bytes"]) + ("" if g.get("fits_memory", True) else " (too much)")]
        if timed:
            row += [f"{g['u_seconds']:.4g}", f"{g['seconds']:.4g}"]
        rows.append(row)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return ["  " + "  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in [header, *rows]]


def _traffic_lines(t: dict[str, Any]) -> list[str]:
    """A round's bytes device <-> edge and edge <-> cloud."""
    de, ec = t["device_edge"], t["edge_cloud"]
    return [f"  device<->edge {size(de['total_bytes'])}: down {size(de['download_bytes'])}, "
            f"up {size(de['upload_bytes'])}",
            f"  edge<->cloud  {size(ec['total_bytes'])}: up {size(ec['upload_bytes'])}, "
            f"down {size(ec['download_bytes'])}"]


def _schedule_lines(h: dict[str, Any]) -> list[str]:
    """How the groups were made and chosen, and their divergence, budget and round time."""
    groups = h["groups"]
    sizes, depths, rounds = ([g[k] for g in groups] for k in ("size", "depth", "intra_rounds"))
    lines = []
    if h["source"] == "flags":
        lines.append(f"{len(groups)} group{'s' * (len(groups) != 1)} ({_joined(sizes)}; consecutive device ids), "
                     f"depths {_joined(depths)}, intra-group rounds {_joined(rounds)} (tau local steps each)")
    else:
        st = h["settings"]
        lines.append(f"{len(groups)} groups of the {h['num_clients']} clients ({st['grouping']}, seed {h['seed']}; "
                     f"depth {st['depth']!r}, intra_rounds {st['intra_rounds']!r}, priority {st['priority']}, "
                     f"objective {st['objective']})")
        if "divergence" in h:
            lines.append("  examples and KL from the data's key counts before truncation drops (the run counts them "
                         "after dropping the examples whose response max_length cuts away)")
        if h.get("fleet") and "auto" in (st["depth"], st["intra_rounds"]):
            lines.append("  depth and intra rounds chosen ('auto') on the fleet's un-jittered profiles (the run's "
                         "start-up schedule, its algorithm.txt)")
        lines.append(f"  depths {_joined(depths)}, intra-group rounds {_joined(rounds)} (tau = "
                     f"{h['local_steps']} local steps each)")
    lines += _group_table(h)
    d = h.get("divergence")
    if d:
        line = f"  size-weighted KL J = {d['divergence']:.4f} (max group KL {d['max_kl']:.4f})"
        if "random" in d:
            r = d["random"]
            line += f"; random grouping ({r['draws']} seeded draws): mean {r['mean']:.4f}, min {r['min']:.4f}"
        lines.append(line)
    fleet = h.get("fleet")
    if fleet:
        tiers = ", ".join(f"{t['tier']} {t['devices']} x ({t['tflops']:g} TFLOP/s, {t['mem_gib']:g} GiB, "
                          f"{t['up_mbps']:g}/{t['down_mbps']:g} Mbps up/down)" for t in fleet["tiers"])
        lines.append(f"  fleet {fleet['source']}: {tiers}; latency {fleet['latency_s']:g} s, edge<->cloud "
                     f"{fleet['edge_cloud_mbps']:g} Mbps (simulated times, ASSUMED profiles)")
        if h.get("budget_seconds") is not None:
            over = h["round_seconds"] > h["budget_seconds"] * (1 + 1e-9)
            lines.append(f"  round budget T* = {h['budget_seconds']:.4g} s; round time (slowest group) "
                         f"{h['round_seconds']:.4g} s" + (" (over the budget: a fixed depth and intra rounds are "
                                                           "taken as given)" if over else ""))
        else:
            lines.append(f"  round time (slowest group) {h['round_seconds']:.4g} s")
    if h.get("round0"):
        r0 = h["round0"]
        depths0, rounds0 = [c["depth"] for c in r0], [c["intra_rounds"] for c in r0]
        same = depths0 == depths and rounds0 == rounds
        lines.append(f"  round 0 on its jittered profiles (jitter {fleet['jitter']:g}): depths "
                     f"{_joined(depths0)}, intra-group rounds {_joined(rounds0)}"
                     f" ({'the same' if same else 'differs from the start-up schedule'}; re-chosen every "
                     f"{h['settings']['reconfigure_every']} round(s))")
    per_round = h.get("clients_per_round")
    if per_round is not None and h.get("num_clients") is not None and per_round < h["num_clients"]:
        lines.append(f"  planned with every device taking part; federated.clients_per_round samples {per_round} of "
                     f"{h['num_clients']}, and a sampled round moves less")
    return lines


def render_hier(p: dict[str, Any]) -> str:
    """A HierFedLoRA plan's report: per-depth costs, the groups, a round's traffic at both levels, FedAvg-LoRA's."""
    m, s, h, par = p["model"], p["split"], p["hier"], p["params"]
    in_use: dict[int, list[str]] = {}
    for g in h["groups"] or []:
        in_use.setdefault(g["depth"], []).append(str(g["group"]))
    lines = [
        f"{p['algorithm']} plan for {m['name']} ({m['class']}, {m['num_layers']} decoder layers, {m['dtype']})",
        (f"LoRA r={s['lora_r']} alpha={s['lora_alpha']} on {', '.join(s['lora_targets'])}: "
         f"{h['lora_params_per_layer']:,} params = {h['layer_bytes']:,} B (fp32) per layer; every client holds the "
         f"full model ({par['full']:,} params, a one-time download of {size(p['one_time']['compressed_base_bytes'])})"),
        (f"depth  LoRA params  message      FLOPs/token vs full  est. client peak ({h['micro_batch_tokens']:,} tok)"
         + ("  groups" if in_use else "")),
    ]
    for row in h["depth_table"]:
        used = in_use.get(row["depth"])
        lines.append((f"{row['depth']:>5}  {row['lora_params']:>11,}  {_unit(row['message_bytes']):>9}    "
                      f"{row['flops_vs_full']:<20.3f} {_memory(row['peak_memory_bytes']):<28}"
                      + (f"  {','.join(used)}" if used else "")).rstrip())
    lines.append(f"FLOPs/token at T={h['seq_len']:,}: forward through all {h['num_layers']} layers, backward through "
                 f"the top d; peak memory: weights + LoRA state and activations of d layers")
    flat = h["flat"]
    if h["groups"] is None:
        lines += [
            "groups: give --group-sizes (or --groups with --clients), --depths and --intra-rounds, or a run's --config "
            "(depth and intra_rounds 'auto' are chosen from its data and device fleet)",
            (f"fedavg_lora for comparison: every device all {h['num_layers']} layers once each way, "
             f"{size(flat['download_bytes'])} down and up per device and round"),
        ]
        return "\n".join(lines)
    t = h["traffic"]
    lines += _schedule_lines(h)
    lines.append(f"per global round (steady state: each group first fetches the top max(c, d_g) layers, c = "
                 f"{t['changed_depth']} changed in the last round; LoRA as float32)")
    lines += _traffic_lines(t)
    lines.append(f"first round (every device fetches all {h['num_layers']} layers once):")
    lines += _traffic_lines(t["first_round"])
    lines.append(f"device local steps per global round: {t['device_rounds']:,} x tau   (fedavg_lora, "
                 f"{flat['clients']:,} clients: {flat['device_rounds']:,} x tau, {size(flat['total_bytes'])}, "
                 f"est. client peak {_memory(flat['peak_memory_bytes'])})")
    return "\n".join(lines)


def render(p: dict[str, Any]) -> str:
    """The human-readable report of a :func:`plan` dict (:func:`render_hier` for a HierFedLoRA plan)."""
    if "hier" in p:
        return render_hier(p)
    m, s, lay, par = p["model"], p["split"], p["layers"], p["params"]
    kept, span = lay["emulator"], m["num_layers"] - len(lay["adapter"])
    mem = p["client_peak_memory"]
    trainable, moving = _moving(p)
    if "cut_layer" in s:
        layout = _split_header(p)
        held = "client model (base)       "
        loras = [f"  client LoRA               {s['client_lora']:>16,}",
                 f"  server LoRA               {s['server_lora']:>16,}"]
    else:
        layout = [
            (f"split: adapter layers {s['adapter_layers']} top + {s['bottom_adapter_layers']} bottom, drop rate "
             f"{s['drop_rate']}, LoRA r={s['lora_r']} alpha={s['lora_alpha']} on {', '.join(s['lora_targets'])}"),
            f"  emulator layers ({len(kept)} of {span} kept): {', '.join(map(str, kept)) or 'none'}",
            f"  adapter layers: {', '.join(map(str, lay['adapter']))}",
        ]
        held = "compressed model (base)   "
        loras = [f"  emulator LoRA             {par['emulator_lora']:>16,}",
                 f"  adapter LoRA              {par['adapter_lora']:>16,}"]
    return "\n".join([
        f"{p['algorithm']} plan for {m['name']} ({m['class']}, {m['num_layers']} decoder layers, {m['dtype']})",
        *layout,
        "parameters",
        f"  full model                {par['full']:>16,}",
        f"  {held}{par['compressed']:>16,}",
        *loras,
        trainable,
        *moving,
        (f"one-time download of the {'client' if 'cut_layer' in s else 'compressed'} base weights ({m['dtype']}): "
         f"{size(p['one_time']['compressed_base_bytes'])}"),
        (f"client peak training memory, estimated for {mem['micro_batch_tokens']:,} tokens a micro-batch: "
         f"{size(mem['total'])} (weights {size(mem['weights'])}, activations {size(mem['activations'])}, "
         f"logits {size(mem['logits'])})"),
        *_compute_lines(p),
    ])


def _split_footer(split_plans: list[dict[str, Any]], full: int) -> str:
    """The comparison's footer line on the split rows: settings, formula and numbers of each."""
    s = split_plans[0]["split"]
    parts = []
    for p in split_plans:
        q = p["split"]
        cut = f"k={q['cut_layer']}" + (f", m={q['client_top_layers']}" if q["u_shaped"] else "")
        parts.append(f"{p['algorithm']} ({cut}, client LoRA {q['client_lora']:,}): {split_numbers(q)}")
    negative = any(p["per_client_per_round"]["download_bytes"] > full * LORA_BYTES for p in split_plans)
    return (f"Split: activations and gradients at the cut on each of M={s['micro_batches']:,} micro-batches of "
            f"B={s['batch_size']:,} x T={s['seq_len']:,} tokens per client and round (d={s['hidden_size']:,}, "
            f"{s['activation_dtype']} activations, b={s['activation_bytes']}), mask B·T (uint8), vanilla labels "
            f"4·B·T (int32) and two float32 loss scalars, plus the client LoRA (float32) each way; "
            + "; ".join(parts) + "."
            + (" A negative reduction: more bytes than the model's weights." if negative else ""))


def _compute_footer(plans: list[dict[str, Any]]) -> str:
    """The comparison's footer line on the FLOPs columns."""
    by_name = {p["algorithm"]: p for p in plans}
    line = (f"FLOPs per token at T={plans[0]['client_compute']['seq_len']:,} (fedbiot_pl.scaling.flops: linears, "
            "LoRA, attention, LM head; forward + backward of one client training step); server per client: the "
            "split server's on each client token")
    split_rows = [p for p in plans if "server_compute_per_client" in p]
    if split_rows and "fedavg_lora" in by_name:
        line += (f" (client + server = fedavg_lora's {flops(by_name['fedavg_lora']['client_compute']['total'])}, "
                 "the head counted once)")
    kd_rows = [p for p in plans if "public_forward" in p["client_compute"]]
    if kd_rows:
        c = kd_rows[0]["client_compute"]
        line += (f"; KD rows: plus {c['public_tokens_per_round']:,} public tokens a round forward only "
                 f"({flops(c['public_forward'])} each)")
    return line + "."


def render_comparison(plans: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`compare`'s plans, with the traffic reductions spelled out.

    Bytes are per client and round (LoRA as float32, KD as top-k payloads, split as activations,
    gradients and the client LoRA). "vs full model" compares one client's download in a round with
    sending the full model's weights once as float32 (what full fine-tuning exchanges each way per
    client and round; for LoRA the ratio of parameter counts); "vs own model" compares it with the
    model that client holds and adapts. A KD row's bytes are an upper bound (see the footer); they do
    not grow with the model, and a split row's grow with the tokens, so on a tiny model either can
    exceed it (a negative reduction). The FLOPs columns are per token of a client's training step and,
    for split learning, the server's per token of each client.
    """
    full = plans[0]["params"]["full"]
    clients = plans[0]["per_round"]["clients"]
    head = ("| algorithm | client model params | client trainable | down / client / round | up / client / round "
            f"| round total ({clients} client{'s' if clients != 1 else ''}) | down vs full model | down vs own model "
            "| client FLOPs/token (fwd+bwd) | server FLOPs/token per client | est. client peak memory |")
    rows = [head, "|" + "---|" * 11]
    for p in plans:
        one, rnd, client_params = p["per_client_per_round"], p["per_round"], p["params"]["compressed"]
        down = one["download_bytes"]
        server = p.get("server_compute_per_client")
        rows.append(
            f"| {p['algorithm']} | {client_params:,} | {p['trainable']['client']:,} | {size(down)} "
            f"| {size(one['upload_bytes'])} | {size(rnd['download_bytes'] + rnd['upload_bytes'])} "
            f"| {1 - down / (full * LORA_BYTES):.4%} | {1 - down / (client_params * LORA_BYTES):.4%} "
            f"| {flops(p['client_compute']['total'])} | {flops(server['total']) if server else '-'} "
            f"| {p['client_peak_memory']['total'] / 2**30:.2f} GiB |"
        )
    m = plans[0]["model"]
    split_rows = [p for p in plans if "cut_layer" in p["split"]]
    tokens = (f" (split rows: B·T = {split_rows[0]['client_peak_memory']['micro_batch_tokens']:,}, logits only "
              "where the client holds the LM head)" if split_rows else "")
    rows.append(
        f"\n{m['name']}: {full:,} parameters ({m['dtype']}); LoRA travels as float32; peak memory for "
        f"{plans[0]['client_peak_memory']['micro_batch_tokens']:,} tokens a micro-batch{tokens} "
        "(fedbiot_pl.scaling.memory)."
    )
    rows.append(_compute_footer(plans))
    kd_plans = [p for p in plans if "kd" in p]
    if kd_plans:
        kd = kd_plans[0]["kd"]
        names = ", ".join(p["algorithm"] for p in kd_plans)
        rows.append(
            f"KD ({names}): no LoRA travels; per client and direction {_kd_moves(kd)} (every example counted at T "
            f"tokens; one of L tokens sends L - 1): {kd['public_examples']:,}·{kd['seq_len']:,}·{kd['top_k']:,}·"
            f"(2 + {kd['index_bytes']}) + 12·{kd['public_examples']:,} + 4 = "
            f"{kd_plans[0]['per_client_per_round']['upload_bytes']:,} B; dense float16 logits would be "
            f"{size(kd['dense_fp16_bytes'])}."
            + (" A negative reduction: more bytes than the model's weights." if any(
                p["per_client_per_round"]["download_bytes"] > full * LORA_BYTES for p in kd_plans) else "")
        )
    if split_rows:
        rows.append(_split_footer(split_rows, full))
    hier_rows = [p["algorithm"] for p in plans if "hier" in p]
    if hier_rows:
        rows.append(f"Hierarchical ({', '.join(hier_rows)}): the row is one group of every client at full depth "
                    "(d = L, K = 1), FedAvg-LoRA's figures; for its groups' depths, intra-group rounds and a round's "
                    "traffic device<->edge and edge<->cloud plan it alone (--algorithm hierfedlora --group-sizes ... "
                    "--depths ... --intra-rounds ..., or a run's --config).")
    return "\n".join(rows)
