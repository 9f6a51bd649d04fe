"""ats-viz, the Streamlit entry point: `streamlit run app.py`. It only routes to the pages."""

import streamlit as st

st.set_page_config(page_title="ats-viz: Adaptive Token Sampling", page_icon=":material/blur_on:", layout="wide")
PAGES = [
    ("pages/0_Home.py", "Home", ":material/home:"),
    ("pages/1_Image.py", "Image", ":material/image:"),
    ("pages/2_Compare.py", "Compare", ":material/compare:"),
    ("pages/3_Video.py", "Video", ":material/movie:"),
    ("pages/4_Dataset.py", "Dataset", ":material/monitoring:"),
]
nav = st.navigation([st.Page(p, title=t, icon=i, default=(t == "Home")) for p, t, i in PAGES])
nav.run()
