"""Image: the tokens ATS keeps at every stage of one image, their scores and what it costs."""

import pandas as pd
import streamlit as st

import ui
from ats_viz import viz
from ats_viz.setting import FULL

settings = ui.sidebar()
st.title("The tokens of one image, stage by stage")
loaded = ui.model_or_error(settings) if settings else None
chosen = ui.image_input("image")
if loaded is None or chosen is None:
    st.stop()

name, data = chosen
prepared = ui.prepare(loaded, name, data)
if prepared is None:
    st.stop()
x, seen = prepared
with st.spinner("Running the model..."):
    res = ui.run(loaded, x, settings.config, settings.device)
    full = ui.run(loaded, x, FULL, settings.device)

total = res.grid[0] * res.grid[1]
final = int(res.patch_counts[0, -1])
gf, full_gf = float(res.gflops[0]), res.full_gflops
top_ats, top_full = viz.topk(res.logits[0], loaded.class_names), viz.topk(full.logits[0], loaded.class_names)
agree = top_ats[0][0] == top_full[0][0]

left, right = st.columns([1, 3])
left.image(seen, caption=f"{name}, as the model sees it ({seen.shape[1]} x {seen.shape[0]})",
           width="stretch")
with right:
    m = st.columns(4)
    m[0].metric("Tokens kept", f"{final} / {total}")
    m[1].metric("GFLOPs", f"{gf:.3f}", f"{gf - full_gf:+.3f} vs full", delta_color="inverse")
    m[2].metric("Saved", f"{1 - gf / full_gf:.1%}", help=f"Full model: {full_gf:.3f} GFLOPs")
    m[3].metric("Top-1", top_ats[0][0], "same as full" if agree else f"full says {top_full[0][0]}",
                delta_color="normal" if agree else "inverse")
    ui.shipped_model_note(loaded)
    st.plotly_chart(viz.tokens_figure({settings.config.label(): res, FULL.label(): full}), width="stretch")

speed = ui.measured_speed(loaded, x, [settings.config], "image", settings.device)
if speed is not None:
    mine, ref = speed[settings.config.id], speed[FULL.id]
    s = st.columns(4)
    s[0].metric(f"{settings.config.label()}: measured", f"{mine.ms_per_image:.1f} ms",
                help=f"Interquartile range {mine.ms(0.25):.1f} to {mine.ms(0.75):.1f} ms")
    s[1].metric("full: measured", f"{ref.ms_per_image:.1f} ms",
                help=f"Interquartile range {ref.ms(0.25):.1f} to {ref.ms(0.75):.1f} ms")
    s[2].metric("Measured speed-up", f"{ref.ms_per_image / mine.ms_per_image:.2f}x")
    s[3].metric("GFLOPs ratio", f"{ref.gflops / mine.gflops:.2f}x",
                help="Full GFLOPs over this setting's: the speed-up the GFLOPs promise.")

st.subheader("What each stage keeps")
ui.show_stages(seen, res)

st.subheader("Predictions")
p1, p2 = st.columns(2)
p1.markdown(f"**With {settings.config.label()}**")
p1.dataframe(pd.DataFrame(top_ats, columns=["class", "probability"]), hide_index=True, width="stretch")
p2.markdown("**Full model**")
p2.dataframe(pd.DataFrame(top_full, columns=["class", "probability"]), hide_index=True, width="stretch")

d1, d2 = st.columns(2)
# A callable: the figure is drawn when the button is pressed, not on every rerun.
d1.download_button("Stage overlays (PNG)", lambda: viz.stage_figure_png(seen, res), file_name="ats-stages.png",
                   mime="image/png", disabled=not res.stages)
d2.download_button("Trace (JSON)", ui.trace_json(res, full, loaded, settings, name), file_name="ats-trace.json",
                   mime="application/json")
